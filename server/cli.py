"""`mera-serve`: vLLM's OpenAI-compatible server with the leaderboard's Gemma-4 settings.

Every settings field is a flag (`--max-model-len`) and an environment variable
(`MERA_SERVE_MAX_MODEL_LEN`); flags win. Guard fields are `--guard-<name>`.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from mera_multi.version import add_version_flag
from server import preflight
from server.guard.config import GuardSettings
from server.launch import LaunchError, run, shell_command, vllm_argv, vllm_env
from server.settings import ServerSettings

EPILOG = """examples:
  mera-serve                       serve google/gemma-4-E4B-it as on the leaderboard (GPU)
  mera-serve --dev --port 8011     serve the tiny random Gemma-4 on CPU (development, CI)
  mera-serve --judge               serve the JudgeScore classifier on port 8001
  mera-serve --print-config        show the effective settings and the vLLM command, then exit
"""


def _kind(field: FieldInfo) -> str:
    ann = field.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
    base = typing.get_origin(args[0]) or args[0]
    if base is bool:
        return "bool"
    if base in (dict, list):
        return "json"
    return "scalar"


def _add_fields(parser: argparse.ArgumentParser, model: type[BaseModel], prefix: str = "") -> None:
    for name, field in model.model_fields.items():
        if name == "guard":
            continue
        flag = "--" + (prefix + name).replace("_", "-")
        dest = (prefix + name).replace("-", "_")
        help_text = field.description or ""
        kind = _kind(field)
        if kind == "bool":
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind == "json":
            parser.add_argument(flag, dest=dest, type=json.loads, default=None, metavar="JSON", help=help_text)
        else:
            parser.add_argument(flag, dest=dest, default=None, metavar=name.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mera-serve",
        description="Serve a Gemma-4 model with vLLM's own OpenAI-compatible server, configured as the "
        "MERA Multi leaderboard run (bf16, custom chat template, seed 1234, context 10000).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--print-config", action="store_true", help="Print the effective settings and vLLM command.")
    add_version_flag(parser)
    _add_fields(parser.add_argument_group("server settings (env MERA_SERVE_<NAME>)"), ServerSettings)
    _add_fields(parser.add_argument_group("guard settings (env MERA_SERVE_GUARD__<NAME>)"), GuardSettings, "guard_")
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    values: dict[str, Any] = {}
    guard: dict[str, Any] = {}
    for key, value in vars(args).items():
        if value is None or key == "print_config":
            continue
        if key.startswith("guard_"):
            guard[key.removeprefix("guard_")] = value
        else:
            values[key] = value
    settings = ServerSettings(**values)
    if guard:
        settings.guard = GuardSettings.model_validate(settings.guard.model_dump() | guard)
    return settings


def _one_line(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {msg}")
    return "; ".join(problems)


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
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        if args.print_config:
            print_config(settings)
            return 0
        preflight.check(settings)  # engine installed, GPU present: one line naming the fix otherwise
        return run(settings)
    except ValidationError as exc:
        print(f"mera-serve: invalid configuration: {_one_line(exc)}", file=sys.stderr)
        return 2
    except LaunchError as exc:
        print(f"mera-serve: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
