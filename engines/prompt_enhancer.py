"""The optional prompt enhancer: an LLM rewrites a short request into a detailed prompt.

One interface, two backends (``ModelConfig.enhancer.backend``):

- ``transformers``: a causal LM in this process (by default the model's own Gemma text encoder,
  as ``LTX2Pipeline.enhance_prompt`` does for LTX-2): the CPU path, and the tiny preset's.
- ``vllm``: a vLLM server's OpenAI-compatible chat API (continuous batching on GPUs).

Both send LTX-2's message template (system prompt, then ``user prompt: ...``), sample with
LTX-2's settings and clean the answer with diffusers' ``clean_response``. An empty answer keeps
the user's prompt. Imports no Ray.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from diffusers.pipelines.ltx2.prompt_enhancement import clean_response
from diffusers.pipelines.ltx2.utils import GEMMA3_PROMPT_ENHANCEMENT_CONFIG, T2V_DEFAULT_SYSTEM_PROMPT

from engines.config import EnhancerConfig, ModelConfig
from engines.errors import ConfigError
from engines.model_loader import Components, load_components
from engines.runtime import configure_threads

# Gemma's chat format, for tokenizers that carry no template (the presets' in-code tokenizer).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def enhancement_messages(prompt: str, system_prompt: str = "") -> list[dict[str, str]]:
    """LTX-2's text-to-video enhancement conversation."""
    prefix = GEMMA3_PROMPT_ENHANCEMENT_CONFIG.user_prompt_prefix
    return [{"role": "system", "content": system_prompt or T2V_DEFAULT_SYSTEM_PROMPT.strip()},
            {"role": "user", "content": f"{prefix}: {prompt}"}]


def _answer(raw: str, prompt: str) -> str:
    return clean_response(raw).strip() or prompt


class PromptEnhancer(ABC):
    """Rewrites prompts; the same seed gives the same rewrite."""

    @abstractmethod
    def enhance(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[str]:
        """One enhanced prompt per input prompt, in order."""

    def close(self) -> None:  # noqa: B027 - most enhancers hold nothing to release
        """Release connections."""


class TransformersEnhancer(PromptEnhancer):
    """A causal LM's `generate` in this process."""

    def __init__(self, config: ModelConfig, components: Components | None = None) -> None:
        configure_threads(config)
        self.settings = config.enhancer
        if self.settings.model:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.settings.model, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(self.settings.model, local_files_only=True).eval()
            self.model.to(config.device)
        else:
            comps = components if components is not None and components.text_encoder is not None \
                else load_components(config, ("tokenizer", "text_encoder"))
            self.tokenizer, self.model = comps.tokenizer, comps.text_encoder
        if self.tokenizer.chat_template is None:
            self.tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
        self.device = torch.device(config.device)
        self._lock = threading.Lock()  # generate seeds torch's global RNG: one request at a time

    @torch.inference_mode()
    def enhance(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[str]:
        return [self._one(p, s) for p, s in zip(prompts, seeds, strict=True)]

    def _one(self, prompt: str, seed: int) -> str:
        inputs = self.tokenizer.apply_chat_template(
            enhancement_messages(prompt, self.settings.system_prompt), add_generation_prompt=True,
            return_tensors="pt", return_dict=True).to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with self._lock, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # `generate` takes no Generator (as in LTX2Pipeline.enhance_prompt)
            out = self.model.generate(**inputs, max_new_tokens=self.settings.max_new_tokens,
                                      do_sample=self.settings.temperature > 0,
                                      temperature=self.settings.temperature or None, pad_token_id=pad)
        new_tokens = out[0, inputs["input_ids"].shape[1]:]
        return _answer(self.tokenizer.decode(new_tokens, skip_special_tokens=True), prompt)


class VllmEnhancer(PromptEnhancer):
    """A vLLM server's OpenAI-compatible chat completions (vLLM batches concurrent requests)."""

    def __init__(self, settings: EnhancerConfig, max_concurrency: int = 16) -> None:
        from openai import OpenAI

        self.settings = settings
        self.client = OpenAI(base_url=settings.url, api_key="unused", timeout=settings.timeout_seconds,
                             max_retries=2)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="vllm-enhancer")

    def enhance(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[str]:
        return list(self._pool.map(self._one, prompts, seeds))

    def _one(self, prompt: str, seed: int) -> str:
        reply = self.client.chat.completions.create(
            model=self.settings.model, messages=enhancement_messages(prompt, self.settings.system_prompt),
            max_tokens=self.settings.max_new_tokens, temperature=self.settings.temperature, seed=seed)
        return _answer(reply.choices[0].message.content or "", prompt)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.client.close()


def create_enhancer(config: ModelConfig, components: Components | None = None) -> PromptEnhancer:
    settings = config.enhancer
    if not settings.enabled:
        raise ConfigError("model.enhancer.enabled", "is false: this server has no prompt enhancer")
    if settings.backend == "vllm":
        return VllmEnhancer(settings)
    return TransformersEnhancer(config, components)
