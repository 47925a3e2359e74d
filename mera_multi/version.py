"""`--version` for both commands: the installed package version and, in a git checkout, the commit."""

from __future__ import annotations

import argparse
import subprocess
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "mera-multi"
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def package_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def source_commit(root: Path = SOURCE_ROOT) -> str | None:
    """The checkout's commit (`-dirty` with local changes) when the code runs from a git checkout
    (editable install, or the source tree); None for a wheel install, even one in a venv inside a
    checkout, since only a checkout's root holds `.git` next to the package."""
    if not (root / ".git").exists():
        return None
    try:
        # --exclude=*: never a tag name, always the abbreviated commit
        command = ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12", "--exclude=*"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def version_text(prog: str) -> str:
    commit = source_commit()
    return f"{prog} {package_version()}" + (f" (git {commit})" if commit else "")


class VersionAction(argparse.Action):
    """`--version`, worked out only when asked (argparse's own needs the text up front)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0,
                         help=help or "Print the version (and the git commit in a checkout), then exit.")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text(parser.prog))
        parser.exit()


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=VersionAction)
