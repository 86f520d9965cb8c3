"""The LTX-2 transformer as an ONNX graph with dynamic rows and video/audio token axes (for TensorRT).

The graph takes the same tensors `DiTInputs` carries (the per-token video timestep always given:
a text-to-video row simply repeats its timestep), so one graph serves every request shape.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from engines.dit_backend import DiTInputs

GRAPH_FILE = "dit.onnx"
INPUTS = ("video", "audio", "video_context", "audio_context", "context_mask", "timestep", "video_timestep",
          "video_coords", "audio_coords")
OUTPUTS = ("video_velocity", "audio_velocity")
DYNAMIC_AXES = {
    "video": {0: "rows", 1: "video_tokens"}, "audio": {0: "rows", 1: "audio_tokens"},
    "video_context": {0: "rows"}, "audio_context": {0: "rows"}, "context_mask": {0: "rows"}, "timestep": {0: "rows"},
    "video_timestep": {0: "rows", 1: "video_tokens"}, "video_coords": {0: "rows", 2: "video_tokens"},
    "audio_coords": {0: "rows", 2: "audio_tokens"},
    "video_velocity": {0: "rows", 1: "video_tokens"}, "audio_velocity": {0: "rows", 1: "audio_tokens"},
}


class ExportableDiT(torch.nn.Module):
    """Positional tensors in, (video, audio) velocities out: the call the Denoiser makes."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, video, audio, video_context, audio_context, context_mask, timestep, video_timestep,
                video_coords, audio_coords):
        # The rows of every input are one dimension; saying so lets torch.export prove the
        # attention-mask broadcasts (otherwise each input's batch is a separate symbol).
        rows = video.shape[0]
        for t in (audio, video_context, audio_context, context_mask, timestep, video_timestep, video_coords,
                  audio_coords):
            torch._check(t.shape[0] == rows)
        torch._check(video_timestep.shape[1] == video.shape[1])
        return self.transformer(
            hidden_states=video, audio_hidden_states=audio, encoder_hidden_states=video_context,
            audio_encoder_hidden_states=audio_context, timestep=video_timestep, audio_timestep=timestep,
            sigma=timestep, encoder_attention_mask=context_mask, audio_encoder_attention_mask=context_mask,
            video_coords=video_coords, audio_coords=audio_coords, use_cross_timestep=True, return_dict=False)


def graph_inputs(inputs: DiTInputs, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The graph's named, contiguous input tensors for one `DiTInputs` batch (TensorRT and
    onnxruntime bind these): latents and text in the model's dtype, the rest float32."""
    rows, tokens = inputs.video.shape[:2]
    video_t = inputs.video_timestep if inputs.video_timestep is not None else \
        inputs.timestep[:, None].expand(rows, tokens)
    tensors = {"video": inputs.video.to(dtype), "audio": inputs.audio.to(dtype),
               "video_context": inputs.video_context.to(dtype), "audio_context": inputs.audio_context.to(dtype),
               "context_mask": inputs.context_mask.float(), "timestep": inputs.timestep.float(),
               "video_timestep": video_t.float(), "video_coords": inputs.video_coords.float(),
               "audio_coords": inputs.audio_coords.float()}
    return {name: tensors[name].contiguous() for name in INPUTS}


def example_inputs(transformer: torch.nn.Module, rows: int = 2, frames: int = 2, height: int = 2, width: int = 3,
                   audio_tokens: int = 9, text_tokens: int = 8) -> tuple[torch.Tensor, ...]:
    """Inputs of a valid shape for tracing (values do not matter)."""
    cfg = transformer.config
    dev, dt = transformer.device, transformer.dtype
    g = torch.Generator().manual_seed(0)
    tokens = frames * height * width
    coords = transformer.rope.prepare_video_coords(rows, frames, height, width, dev, fps=24.0)
    audio_coords = transformer.audio_rope.prepare_audio_coords(rows, audio_tokens, dev)
    t = torch.full((rows,), 500.0, device=dev)
    return (torch.randn(rows, tokens, cfg.in_channels, generator=g).to(dev, dt),
            torch.randn(rows, audio_tokens, cfg.audio_in_channels, generator=g).to(dev, dt),
            torch.randn(rows, text_tokens, cfg.caption_channels, generator=g).to(dev, dt),
            torch.randn(rows, text_tokens, cfg.caption_channels, generator=g).to(dev, dt),
            torch.ones(rows, text_tokens, device=dev), t, t[:, None].expand(rows, tokens).contiguous(),
            coords, audio_coords)


@torch.inference_mode()
def export_onnx(transformer: torch.nn.Module, directory: str | Path, text_tokens: int, opset: int = 18) -> Path:
    """Write `directory/dit.onnx` (weights beside it in `dit.onnx.data`); returns the graph's path.

    The export goes to a sibling directory renamed into place when complete, so an interrupted
    export is redone on the next build and never loaded half-written.
    """
    directory = Path(directory)
    graph = directory / GRAPH_FILE
    if graph.is_file():
        return graph
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    dims = {name: torch.export.Dim(name, min=1) for name in ("rows", "video_tokens", "audio_tokens")}
    # Text tokens stay static (`text_tokens`): prompts are always padded to the tokenizer's max length.
    dynamic_shapes = {name: {axis: dims[dim] for axis, dim in DYNAMIC_AXES[name].items()} for name in INPUTS}
    example = example_inputs(transformer, text_tokens=text_tokens)
    program = torch.export.export(ExportableDiT(transformer).eval(), example, dynamic_shapes=dynamic_shapes,
                                  strict=False)
    _drop_noop_squeezes(program)
    onnx_program = torch.onnx.export(program, input_names=list(INPUTS), output_names=list(OUTPUTS),
                                     opset_version=opset, optimize=False)
    onnx_program.save(str(partial / GRAPH_FILE), external_data=True)
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return graph


def _drop_noop_squeezes(program: torch.export.ExportedProgram) -> None:
    """torch's squeeze(dim) of a dimension that is not 1 does nothing (diffusers' LTX-2 blocks rely
    on that: `scale.squeeze(2)` on [B, T, D]); ONNX Squeeze rejects it, so such nodes are removed."""
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.squeeze.dim:
            source, dim = node.args[0], node.args[1]
            size = source.meta["val"].shape[dim]
            if isinstance(size, int) and size != 1:
                node.replace_all_uses_with(source)
                graph.erase_node(node)
    program.graph_module.recompile()
