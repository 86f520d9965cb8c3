"""Stage 1: prompts -> per-request conditioning for the video and audio streams of the DiT."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engines.config import ModelConfig
from engines.model_loader import TEXT_ENCODER_PARTS, Components, load_components
from engines.runtime import configure_threads
from engines.stage_io import PromptEmbedding, PromptPair


class TextEncoder:
    """Gemma-3 text tower + LTX-2 connectors, batched over requests.

    Encoding goes through `LTX2Pipeline.encode_prompt` (tokenize, left-pad, stack every hidden
    state) over these modules, so it is the library's own code path.
    """

    def __init__(self, config: ModelConfig, components: Components | None = None) -> None:
        configure_threads(config)
        self.config = config
        comps = components or load_components(config, TEXT_ENCODER_PARTS)
        from diffusers import LTX2Pipeline

        # A pipeline over just the text modules gives us its encode_prompt without the DiT.
        self._pipe = LTX2Pipeline(scheduler=None, vae=None, audio_vae=None, text_encoder=comps.text_encoder,
                                  tokenizer=comps.tokenizer, connectors=comps.connectors, transformer=None,
                                  vocoder=None)
        self._device = torch.device(config.device)

    @torch.inference_mode()
    def encode(self, requests: Sequence[PromptPair]) -> list[PromptEmbedding]:
        """One text-encoder pass per polarity and one connector pass for the whole batch."""
        if not requests:
            return []
        n = len(requests)
        pos, pos_mask, neg, neg_mask = self._pipe.encode_prompt(
            [r.prompt for r in requests], [r.negative_prompt for r in requests],
            do_classifier_free_guidance=True, max_sequence_length=self.config.tokenizer_max_length,
            device=self._device)
        # Same layout as LTX2Pipeline: negatives first, then prompts, through the connectors at once.
        video, audio, mask = self._pipe.connectors(
            torch.cat([neg, pos]), torch.cat([neg_mask, pos_mask]), padding_side=self._pipe.tokenizer.padding_side)
        video, audio, mask = (t.float().cpu().numpy() for t in (video, audio, mask))
        return [PromptEmbedding(video=video[[i, n + i]], audio=audio[[i, n + i]], mask=mask[[i, n + i]])
                for i in range(n)]
