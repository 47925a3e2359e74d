"""Checks a run can make on this machine before it sends anything: chosen tasks, data, output folder.

Each failure is a `UserError` naming the problem and the fix, raised in well under a second, so a typo
never waits for an endpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from evaluator.data import check_local_snapshot
from evaluator.endpoints import normalise_endpoint
from evaluator.errors import UserError
from evaluator.limits import check_run as check_media_limits
from evaluator.registry import TaskSpec, resolve_tasks

if TYPE_CHECKING:
    from evaluator.runner import RunConfig


class OutputError(UserError):
    """The run folder cannot be used: it is a file, or it cannot be written."""


def check_output_dir(path: Path, flag: str = "--output") -> None:
    """`path` is (or can become) a folder this process can write to; created if missing.

    Tried for real (a probe file), not with os.access: root, read-only mounts and full disks all
    answer only to an actual write.
    """
    path = Path(path)
    name = f"{flag} {path}" if flag else str(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{name} is a file, not a folder", fix="name a folder (it is created if missing)")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{name}: {parent} is a file, not a folder", fix="choose another folder")
        if parent.exists():
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-") as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise OutputError(f"{name} is not writable ({exc.strerror})",
                          fix="choose a folder you can write to, or free space / fix permissions there") from None


def preflight(config: RunConfig) -> list[TaskSpec]:
    """Everything `run` can check without the network; returns the chosen tasks. The output folder comes
    last: it is created here, so nothing is left behind by a mistake found earlier."""
    for url in config.endpoints:
        normalise_endpoint(url)  # a URL without a scheme, or not http(s)
    specs = resolve_tasks(config.tasks)
    check_local_snapshot(config.source, specs, config.split)
    check_media_limits(specs, config.options, config.mm_limits)  # e.g. --video-frames over the image limit
    check_output_dir(config.output)
    return specs
