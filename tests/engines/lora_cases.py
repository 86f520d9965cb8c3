"""LoRA adapters for tests, written the way diffusers writes them, and diffusers' own merge as the reference.

Shared by tests/engines/test_lora.py (one forward), test_lora_denoiser.py (the Denoiser's step batches) and
the CLI test. Adapters:

- ``a``: rank 4, alpha 8, on the video attention and feed-forward Linears of blocks 0 and 1;
- ``b``: rank 2, alpha 3, with a rank and alpha pattern (rank 3, alpha 6 on the video feed-forward's first
  Linear), on the audio streams, the cross-modal attentions, the video feed-forward (shared with ``a``) and the
  video timestep embedding's Linear (its input is the per-token timesteps flattened to [rows * tokens]);
- ``c``: a single file without metadata (alpha = rank), rank 2 on block 0's first four attention Linears.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

BLOCKS = ("transformer_blocks.0", "transformer_blocks.1")
ATTN = ("to_q", "to_k", "to_v", "to_out.0")
A_TARGETS = [f"{b}.{a}.{p}" for b in BLOCKS for a in ("attn1", "attn2") for p in ATTN] + \
    [f"{b}.ff.{p}" for b in BLOCKS for p in ("net.0.proj", "net.2")]
B_TARGETS = [f"{b}.{a}.{p}" for b in BLOCKS for a in ("audio_attn1", "audio_to_video_attn", "video_to_audio_attn")
             for p in ATTN] + \
    [f"{b}.{f}.{p}" for b in BLOCKS for f in ("ff", "audio_ff") for p in ("net.0.proj", "net.2")] + \
    ["time_embed.linear"]


def random_pairs(transformer, targets, rank_of, seed):
    """peft-named (lora_A, lora_B) pairs of random factors for `targets`, rank `rank_of(module name)`."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in targets:
        linear = transformer.get_submodule(name)
        r = rank_of(name)
        out[f"{name}.lora_A.weight"] = torch.randn(r, linear.in_features, generator=g) / linear.in_features ** 0.5
        out[f"{name}.lora_B.weight"] = torch.randn(linear.out_features, r, generator=g) * 0.5
    return out


def save_diffusers_way(directory: Path, layers, metadata) -> Path:
    from diffusers import LTX2Pipeline

    LTX2Pipeline.save_lora_weights(directory, transformer_lora_layers=layers,
                                   transformer_lora_adapter_metadata=metadata)
    return directory / "pytorch_lora_weights.safetensors"


def write_adapters(root: Path, transformer, names: tuple[str, ...] = ("a", "b", "c")) -> Path:
    """Write the adapters `names` (of a, b, c above) for `transformer`'s shapes under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    if "a" in names:
        a = random_pairs(transformer, A_TARGETS, lambda n: 4, seed=1)
        save_diffusers_way(root / "a", a, {"r": 4, "lora_alpha": 8, "target_modules": A_TARGETS})
    if "b" in names:
        b_rank = {"ff.net.0.proj": 3}
        b = random_pairs(transformer, B_TARGETS, lambda n: 3 if n.endswith(".ff.net.0.proj") else 2, seed=2)
        save_diffusers_way(root / "b", b, {"r": 2, "lora_alpha": 3, "rank_pattern": b_rank,
                                           "alpha_pattern": {"ff.net.0.proj": 6}, "target_modules": B_TARGETS})
    if "c" in names:  # a single-file adapter without metadata (alpha = rank), named by its stem
        c = random_pairs(transformer, A_TARGETS[:4], lambda n: 2, seed=3)
        save_file({f"transformer.{k}": v for k, v in c.items()}, root / "c.safetensors")
    return root


def _fresh_copy(transformer) -> torch.nn.Module:
    """The same weights in a new module, without the hooks a Denoiser may have attached to the original (the
    step cache's, which hold thread-locals and cannot be deep-copied)."""
    fresh = type(transformer).from_config(transformer.config)
    fresh.load_state_dict(transformer.state_dict())
    p = next(transformer.parameters())
    return fresh.to(device=p.device, dtype=p.dtype).eval()


def merged_reference(transformer, adapter_dir: Path, uses) -> torch.nn.Module:
    """A copy of `transformer` with the adapters fused into its weights by diffusers (load_lora_weights,
    set_adapters, fuse_lora), independent of engines/lora."""
    from diffusers import LTX2Pipeline

    merged = _fresh_copy(transformer)
    if not uses:
        return merged
    pipe = LTX2Pipeline(scheduler=None, vae=None, audio_vae=None, text_encoder=None, tokenizer=None,
                        connectors=None, transformer=merged, vocoder=None)
    with warnings.catch_warnings():  # peft warns that a second adapter joins the first: meant here
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        for name, _ in uses:
            pipe.load_lora_weights(adapter_dir / name, adapter_name=name)
    names = [n for n, _ in uses]
    pipe.set_adapters(names, [s for _, s in uses])
    pipe.fuse_lora(components=["transformer"], adapter_names=names)
    pipe.unload_lora_weights()
    assert not any("lora" in k for k in merged.state_dict()), "the adapters were not fused"
    return merged
