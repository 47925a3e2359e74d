"""`mera-eval`: argument parsing and progress display only; the work lives in the modules.

Errors a user can act on end here, in one place: `main` prints `mera-eval <command>: <one line>` on
stderr and returns the error's exit status; `--debug` (or MERA_DEBUG=1) adds the traceback. Anything
that is not a user error keeps its traceback: it is a bug.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sqlite3
import sys
import traceback

from pydantic import ValidationError

from evaluator.errors import UserError
from mera_multi.version import add_version_flag

# Each command module exposes `add_parser(subparsers)`, which registers its sub-command
# and sets `func` (called with the parsed args; returns the exit status).
COMMAND_MODULES = ["tasks", "sample_data", "run", "score", "report", "submit"]
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors on one line (problem and where to look) instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}; see `{self.prog} --help`\n")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="mera-eval",
        description="Run the MERA Multi benchmark against OpenAI-compatible endpoints, "
        "score it the way the leaderboard does, and write reports and the submission zip.",
    )
    add_version_flag(parser)
    parser.add_argument("--debug", action="store_true", help="Show the traceback of an error (env MERA_DEBUG=1).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"evaluator.cli.{name}").add_parser(sub)
    for command in sub.choices.values():  # `mera-eval run ... --debug` works as well as `mera-eval --debug run`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.commands = dict(sub.choices)
    return parser


# --- errors from outside the program, as one line ---------------------------------------------------
_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}
_SQLITE_ENVIRONMENT = ("disk is full", "disk i/o error", "readonly database", "read-only", "unable to open")


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {a.dest: a.option_strings[-1] if a.option_strings else a.dest.upper() for a in parser._actions}


def _validation_line(exc: ValidationError, flags: dict[str, str]) -> str:
    """pydantic's errors as `--flag: what is wrong (got X)`, named by the flag that set the value."""
    parts = []
    for err in exc.errors(include_url=False):
        names = [str(p) for p in err["loc"] if isinstance(p, str)]
        where = next((flags[n] for n in reversed(names) if n in flags), ".".join(names) or "value")
        got = f" (got {err['input']!r})" if not isinstance(err.get("input"), dict | list) else ""
        parts.append(f"{where}: {err['msg'][:1].lower()}{err['msg'][1:]}{got}")
    return "; ".join(parts)


def user_error(exc: BaseException, flags: dict[str, str] | None = None) -> UserError | None:
    """The user-actionable form of an exception, or None if it is a bug (it keeps its traceback)."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, ConnectionError):  # the client's "no endpoint healthy", "cannot read /v1/models"
        return UserError(str(exc))
    if isinstance(exc, ValidationError):
        return UserError(_validation_line(exc, flags or {}))
    if isinstance(exc, OSError) and exc.errno in _SPACE | _ACCESS:
        where = exc.filename or "a file"
        if exc.errno in _SPACE:
            return UserError(f"cannot write {where}: {exc.strerror}",
                             fix="free some space (or choose another --output) and run the same command again")
        return UserError(f"cannot write {where}: {exc.strerror}",
                         fix="choose a folder you can write to, or fix its permissions")
    if isinstance(exc, sqlite3.DatabaseError) and any(
            s in str(exc).lower() for s in _SQLITE_ENVIRONMENT):
        return UserError(f"cannot write the run store: {exc}",
                         fix="check the free space and permissions of the run folder, then run the same command "
                         "again (replies already stored are kept)")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("MERA_DEBUG", "") not in ("", "0")
    prog = f"mera-eval {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # commands with state to report (run) catch it themselves
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:
        error = user_error(exc, _flags(parser.commands[args.command]))
        if error is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"{prog}: {error.one_line()}", file=sys.stderr, flush=True)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
