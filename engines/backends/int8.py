"""int8 DiT backend for CPUs: the transformer blocks' linears with int8 weights and int8 activations.

torch's dynamic quantization (`torch.ao.quantization.quantize_dynamic`, the x86/fbgemm kernels)
swaps each `nn.Linear` inside `transformer_blocks` for one holding int8 weights with per-tensor
scales; each call scales its activations at run time and multiplies in int8. The embeddings,
AdaLN tables and output head stay float32: quantizing every linear of the model was no faster on
`small` and lost 4 dB more.

Measured on `small` (one thread, one forward of 8 rows, CPU time): 1.29x the float32 step at
50.7 dB PSNR of the decoded frames against float32 (torchao's int8 configurations, uncompiled,
were slower than float32 here: 0.70x and 0.94x). See loadtests/bench_precision.py.

The blocks stay diffusers' own blocks (only their linear children change), so the step cache's
hooks work on top (`runs_block_hooks`). The quantization happens in place: the backend takes over
the transformer it is given (the Denoiser's own).

torch marks `torch.ao.quantization` deprecated; the pinned torch still ships it. A torch without
it makes this backend unavailable (the chain falls back to eager, saying why).
"""

from __future__ import annotations

import warnings

import torch

from engines.dit_backend import BackendUnavailable, EagerBackend


def _block_linears(transformer: torch.nn.Module) -> list[str]:
    return [name for name, module in transformer.named_modules()
            if isinstance(module, torch.nn.Linear) and name.startswith("transformer_blocks.")]


class Int8Backend(EagerBackend):
    """The eager call over a transformer whose block linears run in int8 (CPU)."""

    name = "int8"
    runs_lora = False  # its block linears are quantized modules, not the float Linears the adapters hook

    def __init__(self, transformer: torch.nn.Module) -> None:
        if transformer.device.type != "cpu":
            raise BackendUnavailable(f"int8 dynamic quantization runs on CPUs (x86/fbgemm kernels); the model is on "
                                     f"{transformer.device}")
        if transformer.dtype != torch.float32:
            raise BackendUnavailable(f"int8 dynamic quantization takes float32 weights; the model is "
                                     f"{str(transformer.dtype).removeprefix('torch.')} (set model.dtype: float32)")
        try:
            from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic
        except ImportError as e:
            raise BackendUnavailable(f"this torch has no dynamic quantization ({e})") from None
        names = _block_linears(transformer)
        if not names:
            raise BackendUnavailable("the transformer blocks hold no float linear (already quantized?)")
        with warnings.catch_warnings():  # the deprecation of torch.ao.quantization, said once in the docstring
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated")
            quantize_dynamic(transformer, {name: default_dynamic_qconfig for name in names}, dtype=torch.qint8,
                             inplace=True)
        self.quantized_linears = len(names)
        super().__init__(transformer)
