"""`mera-serve`: vLLM's OpenAI-compatible server with the leaderboard's Gemma-4 settings.

The command line is generated from the settings model (server/settings.py) by pydantic-settings,
which reads dict and list flags as JSON (`--limit-mm-per-prompt '{"image": 2}'`, also
`image=2`); every field is a flag (`--max-model-len`) and an environment variable
(`MERA_SERVE_MAX_MODEL_LEN`), flags win. Guard fields are `--guard.<name>` (or `--guard-<name>`).
The API key is not a flag: argv is public in `ps`.

Every error a user can act on is one line with the fix and exit status 2; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from typing import Any, NoReturn

from pydantic import ValidationError, create_model
from pydantic_settings import BaseSettings, CliSettingsSource, SettingsError

from mera_multi.version import add_version_flag
from server.errors import ServeError, SettingsProblem
from server.guard.config import GuardSettings
from server.launch import run, shell_command, vllm_argv, vllm_env
from server.settings import ServerSettings

EPILOG = """examples:
  mera-serve                       serve google/gemma-4-E4B-it as on the leaderboard (GPU), on 127.0.0.1:8000
  mera-serve --dev --port 8011     serve the tiny random Gemma-4 on CPU (development, CI)
  mera-serve --judge               serve the JudgeScore classifier on port 8001
  mera-serve --print-config        show the effective settings and the vLLM command, then exit
  MERA_SERVE_API_KEY_FILE=key.txt mera-serve --host 0.0.0.0    listen on every interface (a key is required)

dict and list settings take JSON: --limit-mm-per-prompt '{"image": 6, "audio": 6, "video": 1}'
"""
NOT_ON_COMMAND_LINE = frozenset({"api_key"})  # argv is public in `ps`: the key comes from the environment or a file


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line naming the fix (not usage plus a message)."""

    settings_source: CliSettingsSource

    def error(self, message: str) -> NoReturn:
        fix = "mera-serve --help lists every option"
        if message.startswith("unrecognized arguments:"):
            unknown = message.split(":", 1)[1].split()[0]
            options = [o for action in self._actions for o in action.option_strings]
            close = difflib.get_close_matches(unknown.split("=")[0], options, n=1, cutoff=0.6)
            if close:
                fix = f"did you mean {close[0]}?"
            if unknown.startswith("--api-key"):
                fix = "the key is read from MERA_SERVE_API_KEY or a file (MERA_SERVE_API_KEY_FILE), never from argv"
        raise SettingsProblem(message, fix=fix)


def _command_line_model() -> type[BaseSettings]:
    """The settings model minus the fields that must never be on argv."""
    fields: dict[str, Any] = {
        name: (field.annotation, field)
        for name, field in ServerSettings.model_fields.items()
        if name not in NOT_ON_COMMAND_LINE
    }
    return create_model("ServeCommandLine", __base__=BaseSettings, **fields)


def build_parser() -> _Parser:
    parser = _Parser(
        prog="mera-serve",
        description="Serve a Gemma-4 model with vLLM's own OpenAI-compatible server, configured as the\n"
        "MERA Multi leaderboard run (bf16, custom chat template, seed 1234, context 10000).\n\n"
        "Every option is also an environment variable MERA_SERVE_<NAME> (guard options\n"
        "MERA_SERVE_GUARD__<NAME>); flags win. The API key comes only from MERA_SERVE_API_KEY /\n"
        "VLLM_API_KEY or the file MERA_SERVE_API_KEY_FILE, never from the command line.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `--max-model` must not silently mean `--max-model-len`
    )
    parser.add_argument("--print-config", action="store_true", help="Print the effective settings and vLLM command.")
    add_version_flag(parser)
    parser.add_argument("--debug", action="store_true", help="Show the traceback of an error.")
    dashed = {f"guard.{n}".replace("_", "-"): f"guard-{n}".replace("_", "-") for n in GuardSettings.model_fields}
    parser.settings_source = CliSettingsSource(
        _command_line_model(), root_parser=parser, cli_kebab_case=True, cli_implicit_flags=True,
        cli_hide_none_type=True, cli_shortcuts=dashed,
    )  # fmt: skip
    return parser


def settings_from_args(args: argparse.Namespace, parser: _Parser | None = None) -> ServerSettings:
    source = (parser or build_parser()).settings_source
    return ServerSettings(_cli_settings_source=source(parsed_args=args))


def _flag(loc: tuple) -> str:
    """`("guard", "max_body_bytes")` -> `--guard.max-body-bytes / MERA_SERVE_GUARD__MAX_BODY_BYTES`."""
    names = [str(p) for p in loc if isinstance(p, str)]
    if not names:
        return "settings"
    if names[0] in ("MERA_SERVE_API_KEY", "VLLM_API_KEY"):
        return names[0]
    flag = "--" + ".".join(names).replace("_", "-")
    env = "MERA_SERVE_" + "__".join(names).upper()
    return f"{flag} / {env}" if names[0] not in NOT_ON_COMMAND_LINE else env


def one_line(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{_flag(err['loc'])}: {msg}" if err["loc"] else msg)
    return "invalid configuration: " + "; ".join(problems)


def print_config(settings: ServerSettings) -> None:
    shown = settings.model_dump(mode="json")
    shown["api_key"] = "***" if settings.api_key else None
    print("# effective settings")
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    model = str(settings.dev_checkpoint_dir()) if settings.dev else settings.model
    env = vllm_env(settings, base={})
    env_shown = {k: ("***" if k == "VLLM_API_KEY" else v) for k, v in env.items()}
    print("# vLLM command")
    print(" ".join(f"{k}={shell_command([v])}" for k, v in sorted(env_shown.items()) if k != "MERA_GUARD_CONFIG"))
    print(shell_command(vllm_argv(settings, model)))


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    debug = "--debug" in raw
    try:
        parser = build_parser()
        args = parser.parse_args(raw)
        settings = settings_from_args(args, parser)
        if args.print_config:
            print_config(settings)
            return 0
        return run(settings)
    except KeyboardInterrupt:
        print("mera-serve: interrupted", file=sys.stderr)
        return 130
    except (ServeError, ValidationError, SettingsError) as exc:
        if debug:
            raise
        print(f"mera-serve: {_message(exc)}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, ServeError) else 2


def _message(exc: Exception) -> str:
    if isinstance(exc, ServeError):
        return exc.one_line()
    if isinstance(exc, ValidationError):
        return one_line(exc)
    # pydantic-settings could not decode a dict/list value (JSON) from the environment or a flag.
    text = " ".join(str(exc).split())
    from_env = re.search(r'field "(\w+)" from source "EnvSettingsSource"', text)
    from_flag = re.match(r"Parsing error encountered for ([\w.]+): (.*)", text)
    if from_env:
        text = f"{_bad_json_variable(from_env[1])} is not valid JSON"
    elif from_flag:
        text = f"--{from_flag[1].replace('_', '-')} is not valid JSON ({from_flag[2]})"
    return f"{text}; dict and list settings take JSON, e.g. --limit-mm-per-prompt '{{\"image\": 6}}'"


def _bad_json_variable(field: str) -> str:
    """The variable behind a field pydantic-settings could not decode (a nested one for `guard`)."""
    prefix = f"MERA_SERVE_{field.upper()}"
    for name, value in sorted(os.environ.items()):
        if name.upper().startswith(prefix) and value.lstrip()[:1] in ("[", "{"):
            try:
                json.loads(value)
            except ValueError:
                return name
    return prefix


if __name__ == "__main__":
    sys.exit(main())
