"""FP8 DiT backend (NVIDIA Ada, Hopper and newer): the transformer blocks' linears in float8.

torchao's float8 dynamic-activation, float8-weight quantization (`Float8DynamicActivationFloat8WeightConfig`,
e4m3, one scale per row of each weight and of each activation) turns the weights of every
`nn.Linear` inside `transformer_blocks` into float8 tensors; each of those matmuls then scales its
activations at run time and runs `torch._scaled_mm` on the FP8 tensor cores. The model is then
compiled like the ``compile`` backend: torch.compile fuses the activation scaling into the
neighbouring kernels, which is where torchao's FP8 inference gets its speed.

Why torchao and not TensorRT FP8 through NVIDIA ModelOpt:
- it is the same diffusers module and the same call as ``eager`` and ``compile``: no ONNX export,
  no engine build per shape profile, and every latent shape a request may ask for works;
- dynamic scales need no calibration set (ModelOpt's FP8 post-training quantization calibrates
  static activation scales over representative prompts: none exist for random-weight presets, and
  each checkpoint would need its own pass);
- TensorRT FP8 would also need the strongly typed ONNX graph (engines/backends/onnx_export.py) to
  carry Q/DQ nodes and a second engine family in the cache. It is the larger win (FP8 attention,
  fused kernels) and the next step once a trained checkpoint can calibrate it.

What stays in the model's bfloat16: patch and caption embeddings, timestep embeddings and AdaLN
tables, the output head, norms and attention's softmax: the precision-sensitive layers and a small
share of the FLOPs. Linears whose sides are not multiples of 16 (what `_scaled_mm` needs) stay too.

The quantization happens in place: the backend takes over the transformer it is given (the
Denoiser's own). Step caching does not apply (one compiled graph over the whole model; see
`runs_block_hooks`).
"""

from __future__ import annotations

import torch

from engines.backends.compiled import CompiledBackend
from engines.dit_backend import BackendUnavailable

MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (sm_89), Hopper (sm_90) and newer


def _require_fp8(transformer: torch.nn.Module) -> None:
    if not torch.cuda.is_available():
        raise BackendUnavailable("FP8 needs an NVIDIA GPU and CUDA is not available here")
    if transformer.device.type != "cuda":
        raise BackendUnavailable(f"the model is on {transformer.device}; FP8 runs on CUDA devices (model.device)")
    capability = torch.cuda.get_device_capability(transformer.device)
    if capability < MIN_CAPABILITY:
        gpu = torch.cuda.get_device_name(transformer.device)
        raise BackendUnavailable(f"FP8 tensor cores need compute capability 8.9 or newer (Ada, Hopper); "
                                 f"{gpu} is sm_{capability[0]}{capability[1]}")
    if transformer.dtype != torch.bfloat16:
        raise BackendUnavailable(f"FP8 with per-row scales needs bfloat16 weights; the model is "
                                 f"{str(transformer.dtype).removeprefix('torch.')} (set model.dtype: bfloat16)")


def is_block_linear(module: torch.nn.Module, name: str) -> bool:
    """The linears FP8 takes: those of the transformer blocks, with sides `_scaled_mm` accepts."""
    return (isinstance(module, torch.nn.Linear) and name.startswith("transformer_blocks.")
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def quantize_blocks_fp8(transformer: torch.nn.Module) -> int:
    """Quantize the block linears of `transformer` in place; returns how many were quantized."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as e:
        raise BackendUnavailable(f"the torchao package is not installed ({e}); pip install 'kino[gpu]'") from None
    taken = [name for name, module in transformer.named_modules() if is_block_linear(module, name)]
    if not taken:
        raise BackendUnavailable("no transformer block linear has sides that are multiples of 16")
    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=is_block_linear)
    return len(taken)


class FP8Backend(CompiledBackend):
    """The compiled eager call over a transformer whose block linears run in float8."""

    name = "fp8"

    def __init__(self, transformer: torch.nn.Module, mode: str | None = None) -> None:
        _require_fp8(transformer)
        self.quantized_linears = quantize_blocks_fp8(transformer)
        super().__init__(transformer, mode)
