"""The project's vLLM plugin on the CPU dev venv: audio is resampled without torchaudio (soxr), a model
that names its own method keeps it, and the check the GPU image runs at build time passes here."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.server_process import PROJECT_ROOT, child_env

pytest.importorskip("vllm", reason="needs the vLLM dev venv (make setup)")


def test_without_torchaudio_vllm_resamples_with_soxr():
    from vllm.multimodal.parse import MultiModalDataParser

    from server import cpu_plugin

    assert not cpu_plugin.torchaudio_available()  # scripts/setup-dev.sh removes the CUDA build
    cpu_plugin.register()
    cpu_plugin.register()  # vLLM loads plugins once per process, but more often must be harmless
    resampler = MultiModalDataParser(target_sr=16000).audio_resampler  # as Gemma-4's processor builds it
    assert resampler.method == "soxr"
    stereo = np.stack([np.sin(np.arange(48000) / 10.0)] * 2).astype(np.float32)
    assert resampler.resample(stereo, orig_sr=48000).shape == (2, 16000)
    mono = np.zeros(int(44100 * 2.5), np.float32)
    assert resampler.resample(mono, orig_sr=44100).shape == (40000,)
    # A model that asks for a method keeps it (phi4mm asks for scipy).
    assert MultiModalDataParser(target_sr=16000, audio_resample_method="scipy").audio_resampler.method == "scipy"


def test_the_build_time_check_passes_and_fails_without_the_plugin():
    ok = subprocess.run([sys.executable, "-m", "server.audio_check"], cwd=PROJECT_ROOT, env=child_env(),
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "with 'soxr'" in ok.stdout
    # VLLM_PLUGINS names the plugins vLLM may load: none of them here, so vLLM's own default is used.
    bare = subprocess.run([sys.executable, "-m", "server.audio_check"], cwd=PROJECT_ROOT,
                          env=child_env({"VLLM_PLUGINS": "none"}), capture_output=True, text=True, timeout=300)
    assert bare.returncode == 1
    assert "resampling with 'torchaudio' failed" in bare.stderr.splitlines()[-1]
