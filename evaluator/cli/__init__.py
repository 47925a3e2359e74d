"""`mera-eval`: argument parsing and progress display only; the work lives in the modules."""

from __future__ import annotations

import argparse
import importlib
import sys

from mera_multi.version import add_version_flag

# Each command module exposes `add_parser(subparsers)`, which registers its sub-command
# and sets `func` (called with the parsed args; returns the exit status).
COMMAND_MODULES = ["tasks", "sample_data", "run", "score", "report", "submit"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mera-eval",
        description="Run the MERA Multi benchmark against OpenAI-compatible endpoints, "
        "score it the way the leaderboard does, and write reports and the submission zip.",
    )
    add_version_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"evaluator.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
