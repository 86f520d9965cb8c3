"""The frozen text side: the tiny Gemma's hidden states for the world's captions, and how far apart they are.

The text encoder is never trained (it is the ``tiny`` preset's seeded random Gemma-3), so the captions must be
told apart by what it already gives. Its tokenizer is character level and the captions differ in a word or two,
so `separability` measures, for every pair of captions that differ in exactly one attribute, how far apart
their stacked hidden states are relative to their size, as the connectors receive them (per-layer masked mean
normalization, `LTX2TextConnectors`' first step). The connectors are trained with the DiT, which is the
smallest fix should the raw states be too close: they can learn to amplify the few positions that differ.
"""

from __future__ import annotations

import itertools

import torch
from diffusers import LTX2Pipeline
from diffusers.pipelines.ltx2.connectors import per_layer_masked_mean_norm

from training.world import PromptClass


@torch.no_grad()
def frozen_text_states(tokenizer, text_encoder, prompts: list[str], max_length: int):
    """Stacked Gemma hidden states ``[K, tokens, D x (layers + 1)]`` and masks ``[K, tokens]``, through
    `LTX2Pipeline.encode_prompt` as Kino's `TextEncoder` runs it."""
    pipe = LTX2Pipeline(scheduler=None, vae=None, audio_vae=None, text_encoder=text_encoder, tokenizer=tokenizer,
                        connectors=None, transformer=None, vocoder=None)
    states, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                            max_sequence_length=max_length, device=torch.device("cpu"))
    return states.float(), mask


@torch.no_grad()
def separability(states: torch.Tensor, mask: torch.Tensor, classes: list[PromptClass],
                 hidden_size: int) -> dict[str, float]:
    """Per attribute: the smallest relative distance ``|a - b| / |a|`` between two captions differing only
    in that attribute (0 would mean the frozen encoder cannot tell them apart)."""
    normed = per_layer_masked_mean_norm(states.unflatten(2, (hidden_size, -1)), mask.sum(-1), states.device,
                                        padding_side="left").flatten(1)
    out: dict[str, float] = {}
    for (i, a), (j, b) in itertools.combinations(enumerate(classes), 2):
        differs = [f for f in ("colour", "shape", "motion", "background") if getattr(a, f) != getattr(b, f)]
        if len(differs) == 1:
            d = float(torch.linalg.norm(normed[i] - normed[j]) / torch.linalg.norm(normed[i]))
            out[differs[0]] = min(out.get(differs[0], float("inf")), d)
    return out
