"""Check that the audio resampler vLLM will use loads and works: `python -m server.audio_check`.

vLLM resamples every clip that is not at the model's rate (Gemma-4: 16 kHz; the MERA clips are 44.1 and
48 kHz) inside the API server, with the method its multimodal parser defaults to ("torchaudio" in vLLM
0.32; "soxr" on the CPU dev server, where server/cpu_plugin.py picks it because torchaudio cannot load).
If that method cannot import, the server starts fine and then answers every such clip with HTTP 500.
This builds the parser as Gemma-4's processor does, after loading vLLM's plugins as the server does, and
resamples a clip at each rate; docker/server.Dockerfile and scripts/setup-dev.sh run it so that such a
server is never built.
"""

from __future__ import annotations

import sys

TARGET_RATE = 16000  # Gemma-4's feature extractor
CHECK_RATES = (8000, 22050, 44100, 48000, 96000)


def check_resampler() -> str:
    """The method vLLM resamples with; raises if it cannot resample."""
    import numpy as np
    from vllm.multimodal.parse import MultiModalDataParser
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    resampler = MultiModalDataParser(target_sr=TARGET_RATE).audio_resampler
    for rate in CHECK_RATES:
        clip = np.sin(2 * np.pi * 440.0 * np.arange(rate) / rate).astype(np.float32)  # one second
        try:
            out = resampler.resample(clip, orig_sr=rate)
        except Exception as exc:  # noqa: BLE001 - vLLM's own message can be misleading: name the method
            raise RuntimeError(f"resampling with {resampler.method!r} failed ({type(exc).__name__}: {exc})") from exc
        if abs(len(out) - TARGET_RATE) > 1:
            raise RuntimeError(f"{resampler.method} turned 1 s at {rate} Hz into {len(out)} samples at {TARGET_RATE} Hz")
    return resampler.method


def main() -> int:
    try:
        method = check_resampler()
    except Exception as exc:  # noqa: BLE001 - any failure here is the 500 a request would get
        print(f"audio resampler check failed: {exc}; vLLM resamples every clip that is "
              f"not {TARGET_RATE} Hz with it (fix: install a torchaudio that loads with this torch, "
              "or see docs/vllm-cpu.md)", file=sys.stderr)
        return 1
    print(f"audio resampler ok: vLLM resamples to {TARGET_RATE} Hz with {method!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
