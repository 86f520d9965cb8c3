"""Stage 2: the DiT denoising loop, one step at a time, batched across requests.

The contract a step-level scheduler drives (vllm-omni's prepare / denoise_step split):

- ``prepare(request) -> DenoiseState``: noise from the request's own seed and its own sigma
  schedule; nothing is shared between requests.
- ``step(states) -> states``: ONE transformer forward for every given state (each at its own
  step: the timestep is a per-row vector), then guidance and the Euler update per request.
- ``result(state) -> DenoisedLatents``: the finished latents, as numpy, for the decoder.

A request may ask to reuse the DiT's work between its steps (``GenerationParams.cache``, see
engines/step_cache.py): its state then carries its own cache, and each step counts on the state
whether the request computed every block or skipped the blocks after the first.

A request may name LoRA adapters (``GenerationParams.loras``, engines/lora/): the Denoiser holds them in its
`AdapterBank` and runs the one forward inside `BatchedLora.rows`, each request's rows (both CFG rows) adding
its own adapters, rows of requests without adapters none. Batches are not split by adapter. The step cache
works beside them: its sub-batch of computing rows adds exactly those rows' adapters (`LoraRows.select`), so
a request with adapters caches, and skips, as it would alone.

The math is LTX2Pipeline's (velocity -> x0, CFG in delta form, guidance rescale, x0 ->
velocity, x + (sigma_next - sigma) * v), so a request denoised here equals the pipeline's.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from cachetools import LRUCache
from diffusers import FlowMatchEulerDiscreteScheduler, LTX2Pipeline
from diffusers.pipelines.ltx2.pipeline_ltx2 import calculate_shift, rescale_noise_cfg, retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor

from engines import denoise_checkpoint
from engines.config import ModelConfig
from engines.dit_backend import DiTBackend, DiTInputs, create_backend
from engines.errors import InvalidParameter, OutOfMemory
from engines.lora import AdapterBank, BatchedLora, LoraRows, RowAdapters, request_rows
from engines.model_loader import DENOISER_PARTS, Components, ComponentSource
from engines.params import GenerationParams
from engines.runtime import configure_threads
from engines.stage_io import DenoisedLatents, DenoiseRequest, LatentGeometry, LatentShape
from engines.step_cache import CachePolicy, FirstBlockCache, RowGroup, StepCacheState, check_block_arguments

log = logging.getLogger(__name__)


@dataclass
class DenoiseState:
    """Everything one request carries between steps; never shared with another request."""

    request_id: str
    params: GenerationParams
    shape: LatentShape
    latents: torch.Tensor  # [1, video tokens, C] float32
    audio_latents: torch.Tensor  # [1, audio tokens, C_a] float32
    sigmas: torch.Tensor  # [steps + 1], ends at 0
    timesteps: torch.Tensor  # [steps]
    video_context: torch.Tensor  # [rows, text tokens, D]: (negative, prompt) with CFG, else (prompt)
    audio_context: torch.Tensor
    context_mask: torch.Tensor
    video_coords: torch.Tensor  # [1, 3, video tokens, 2]
    audio_coords: torch.Tensor  # [1, 1, audio tokens, 2]
    step_index: int = 0  # position in the schedule
    cfg: bool = field(default=True)
    mask: torch.Tensor | None = None  # [1, video tokens]: 1 = a clean conditioning token (first frame)
    start_index: int = 0  # a remix enters the schedule part way
    cache: StepCacheState | None = None  # the request's step cache; None: every step runs every block
    steps_computed: int = 0  # steps whose forward ran every transformer block for this request
    steps_skipped: int = 0  # steps that reused its cached output of the blocks after the first

    @property
    def num_steps(self) -> int:
        """Length of the whole sigma schedule."""
        return int(self.timesteps.shape[0])

    @property
    def steps_total(self) -> int:
        """Steps this request runs (fewer than the schedule for a remix)."""
        return self.num_steps - self.start_index

    @property
    def steps_done(self) -> int:
        return self.step_index - self.start_index

    @property
    def done(self) -> bool:
        return self.step_index >= self.num_steps

    @property
    def rows(self) -> int:
        """Transformer batch rows this request takes (2 with classifier-free guidance)."""
        return 2 if self.cfg else 1


class Denoiser:
    """LTX-2 DiT sampler with step-level batching across requests."""

    def __init__(self, config: ModelConfig, components: Components | None = None,
                 geometry: LatentGeometry | None = None, backend: DiTBackend | None = None) -> None:
        """`backend` overrides the one `config.dit_backend` chooses (e.g. a prebuilt engine)."""
        configure_threads(config)
        self.config = config
        source = ComponentSource(config)
        comps = components or source.load(DENOISER_PARTS)
        self.geometry = geometry or source.geometry()
        self.transformer = comps.transformer
        self.scheduler = comps.scheduler
        self.backend = backend or create_backend(config.dit_backend, comps.transformer, config)
        self.device = torch.device(config.device)
        if self.backend.runs_block_hooks:
            check_block_arguments(self.transformer)  # a diffusers the step cache cannot slice fails here, loudly
        self._block_cache: FirstBlockCache | None = None  # hooks attached on the first cached step
        # LoRA adapters by name, loaded on first use (None: model.lora.dir is not set, requests name none)
        self.adapters = AdapterBank(self.transformer, config.lora) if config.lora.dir is not None else None
        self._lora = BatchedLora(self.transformer, config.lora.delta_path)
        self._cache_off_logged = False
        self._coords: dict[tuple[LatentShape, float], tuple[torch.Tensor, torch.Tensor]] = {}
        # batch members -> (their states, the inputs that do not change between steps): see _static_inputs
        self._static: LRUCache[tuple[str, ...], tuple[tuple[DenoiseState, ...], dict[str, torch.Tensor]]] = \
            LRUCache(maxsize=4)

    # -- prepare -------------------------------------------------------------------------
    def prepare(self, request: DenoiseRequest) -> DenoiseState:
        p, g, cond = request.params, self.geometry, request.conditioning
        self._adapters(p)  # a request whose adapters cannot run is refused before it takes a slot
        shape = LatentShape.for_params(p, g)
        if cond is not None and cond.kind == "refine":
            return self._prepare_refine(request, shape)
        generator = torch.Generator("cpu").manual_seed(p.seed)
        sigmas, timesteps = self._schedule(p.steps, shape.video_tokens, self.config.schedule.sigmas)
        mask, start = None, 0
        # Same draws, in the same order, as the LTX-2 pipelines (video noise, then audio noise).
        if cond is None or cond.kind == "first_frame":
            video = randn_tensor((1, g.latent_channels, shape.frames, shape.height, shape.width),
                                 generator=generator, device=self.device, dtype=torch.float32)
            video = LTX2Pipeline._pack_latents(video, g.patch_size, g.patch_size_t)
            if cond is not None:  # LTX2ImageToVideoPipeline: frame 0 clean, the rest noise
                frame0 = torch.from_numpy(cond.latents).to(self.device)
                init = frame0.repeat(shape.frames, 1)[None]
                mask = torch.zeros(1, shape.video_tokens, 1, device=self.device)
                mask[:, : frame0.shape[0]] = 1.0
                video = init * mask + video * (1 - mask)
                mask = mask[..., 0]
        else:  # remix: LTX2Pipeline's noised state of given latents, entering the schedule at `strength`
            later = torch.nonzero(sigmas[:-1] <= cond.strength + 1e-6)
            start = int(later[0]) if len(later) else p.steps - 1
            source = torch.from_numpy(cond.latents).to(self.device)[None]
            noise = randn_tensor(source.shape, generator=generator, device=self.device, dtype=torch.float32)
            video = sigmas[start] * noise + (1 - sigmas[start]) * source
        audio = randn_tensor((1, g.audio_latent_channels, shape.audio_frames, g.latent_mel_bins),
                             generator=generator, device=self.device, dtype=torch.float32)
        audio = LTX2Pipeline._pack_audio_latents(audio)
        return self._state(request, shape, video, audio, sigmas, timesteps, mask=mask, start=start)

    def _prepare_refine(self, request: DenoiseRequest, shape: LatentShape) -> DenoiseState:
        """Stage 2 of two-stage generation, as LTX2Pipeline enters it with ``latents=``, ``audio_latents=``,
        ``sigmas=`` and ``noise_scale=``: the upsampled video and the stage-1 audio re-noised to the
        refine schedule's first sigma (noise drawn in the packed layout, video first), then denoised over
        that schedule used as is (engines/two_stage.py)."""
        cond, refine = request.conditioning, self.config.schedule.refine_sigmas
        assert cond is not None and cond.audio is not None
        if request.params.steps != len(refine):
            raise ValueError(f"a refine request takes {len(refine)} steps (model.schedule.refine_sigmas), "
                             f"not {request.params.steps}")
        video = torch.from_numpy(cond.latents).to(self.device)[None]
        audio = torch.from_numpy(cond.audio).to(self.device)[None]
        if video.shape[1] != shape.video_tokens or audio.shape[1] != shape.audio_frames:
            raise ValueError(f"refine latents of {video.shape[1]} video and {audio.shape[1]} audio tokens do not "
                             f"fit {request.params.size} for {request.params.seconds:g} s ({shape})")
        # Seed + 1: stage 1 drew its noise from the seed; the refine's is another draw.
        generator = torch.Generator("cpu").manual_seed(request.params.seed + 1)
        video_noise = randn_tensor(video.shape, generator=generator, device=self.device, dtype=torch.float32)
        audio_noise = randn_tensor(audio.shape, generator=generator, device=self.device, dtype=torch.float32)
        s0 = self.config.schedule.refine_start
        sigmas, timesteps = self._schedule(len(refine), shape.video_tokens, refine, shifted=False)
        return self._state(request, shape, s0 * video_noise + (1 - s0) * video,
                           s0 * audio_noise + (1 - s0) * audio, sigmas, timesteps)

    def _state(self, request: DenoiseRequest, shape: LatentShape, video: torch.Tensor, audio: torch.Tensor,
               sigmas: torch.Tensor, timesteps: torch.Tensor, *, mask: torch.Tensor | None = None,
               start: int = 0) -> DenoiseState:
        p, emb = request.params, request.embedding
        rows = [0, 1] if p.use_cfg else [1]
        video_coords, audio_coords = self._rope_coords(shape, float(p.fps))
        return DenoiseState(
            request_id=request.request_id, params=p, shape=shape, latents=video, audio_latents=audio,
            sigmas=sigmas, timesteps=timesteps,
            video_context=torch.from_numpy(emb.video[rows]).to(self.device),
            audio_context=torch.from_numpy(emb.audio[rows]).to(self.device),
            context_mask=torch.from_numpy(emb.mask[rows]).to(self.device),
            video_coords=video_coords, audio_coords=audio_coords, cfg=p.use_cfg, mask=mask,
            step_index=start, start_index=start, cache=self._step_cache(p))

    def _adapters(self, params: GenerationParams) -> RowAdapters:
        """The request's adapters, loaded (`AdapterBank.uses`: a dict hit once loaded, so resolving them at
        every step keeps the adapters in flight the most recently used); () for a request without any."""
        if not params.loras:
            return ()
        if self.adapters is None:
            raise InvalidParameter("loras[0].name", params.loras[0][0],
                                   "none: this model has no LoRA adapters (model.lora.dir is not set)")
        if not self.backend.runs_lora:
            raise InvalidParameter("loras", [n for n, _ in params.loras],
                                   f"none: DiT backend {self.backend.name} does not run the diffusers model's float "
                                   "Linear layers, whose hooks add the adapters (the eager and parallel backends do)")
        return self.adapters.uses(params.loras)

    def _step_cache(self, params: GenerationParams) -> StepCacheState | None:
        """The request's own cache, or None: it asked for ``off``, or the backend runs no block hooks."""
        policy = CachePolicy.for_mode(self.config.step_cache, params.cache)
        if policy is None:
            return None
        if not self.backend.runs_block_hooks:
            if not self._cache_off_logged:
                log.warning("step cache unavailable with DiT backend %s (its forward does not run the diffusers "
                            "blocks, so their hooks cannot skip work); requests run with cache off",
                            self.backend.name)
                self._cache_off_logged = True
            return None
        return StepCacheState(policy)

    def _schedule(self, steps: int, video_tokens: int, sigmas: Sequence[float] | None = None, *,
                  shifted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's flow-matching schedule from a private copy of the scheduler: `sigmas` (a fixed
        list, e.g. a distilled checkpoint's) or LTX2Pipeline's linspace for `steps`, shifted for the
        resolution as the scheduler is configured to (`shifted=False`: the list as is, as the diffusers
        two-stage recipe runs stage 2)."""
        sched = copy.deepcopy(self.scheduler) if shifted else FlowMatchEulerDiscreteScheduler.from_config(
            self.scheduler.config, use_dynamic_shifting=False, shift_terminal=None)
        cfg = sched.config
        mu = calculate_shift(video_tokens, cfg.get("base_image_seq_len", 1024), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.95), cfg.get("max_shift", 2.05))
        given = list(sigmas) if sigmas is not None else np.linspace(1.0, 1 / steps, steps)
        timesteps, _ = retrieve_timesteps(sched, len(given), self.device, sigmas=given, mu=mu)
        return sched.sigmas.to(self.device), timesteps

    def _rope_coords(self, shape: LatentShape, fps: float) -> tuple[torch.Tensor, torch.Tensor]:
        key = (shape, fps)
        if key not in self._coords:
            video = self.transformer.rope.prepare_video_coords(
                1, shape.frames, shape.height, shape.width, self.device, fps=fps)
            audio = self.transformer.audio_rope.prepare_audio_coords(1, shape.audio_frames, self.device)
            self._coords[key] = (video, audio)
        return self._coords[key]

    # -- step ----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, states: Sequence[DenoiseState]) -> list[DenoiseState]:
        """Advance every state by one step with a single transformer forward."""
        if not states:
            return []
        shape = states[0].shape
        for s in states:
            if s.shape != shape:
                raise ValueError(f"states in one step must share a latent shape: {s.request_id} has "
                                 f"{s.shape}, {states[0].request_id} has {shape}")
            if s.done:
                raise ValueError(f"request {s.request_id} has finished all {s.num_steps} steps")
        inputs = self._batch(states)
        rows = request_rows([(self._adapters(s.params), s.rows) for s in states])
        try:
            with self._lora.rows(rows) as lora:  # attaches nothing (None) when no row has an adapter
                if any(s.cache is not None for s in states):
                    video_v, audio_v, skipped = self._cached_forward(states, inputs, lora)
                else:
                    video_v, audio_v = (self.backend.forward(inputs) if lora is None
                                        else self.backend.forward(inputs, lora=lora))
                    skipped = [False] * len(states)
        except torch.OutOfMemoryError as e:  # before any state moved: the step can be retried smaller
            del inputs
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise OutOfMemory(f"a forward of {len(states)} requests ({sum(s.rows for s in states)} rows of "
                              f"{states[0].shape.video_tokens} video tokens) ran out of device memory: {e}") from None
        row = 0
        for s, skip in zip(states, skipped, strict=True):
            n = s.rows
            self._update(s, video_v[row:row + n], audio_v[row:row + n])
            row += n
            if skip:
                s.steps_skipped += 1
            else:
                s.steps_computed += 1
            if s.done and s.cache is not None:
                s.cache.release()
        return list(states)

    def _cached_forward(self, states: Sequence[DenoiseState], inputs: DiTInputs,
                        lora: LoraRows | None) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        """The forward with first-block caching: one row group per state, in `_batch`'s row order; `lora`, the
        rows' adapters, narrowed to the rows that compute blocks 1..N-1 when some skip."""
        if self._block_cache is None:
            self._block_cache = FirstBlockCache.attach(self.transformer)
        plan, row = [], 0
        for s in states:
            may_skip = s.cache is not None and s.cache.policy.allows_skip(s.steps_done, s.steps_total)
            plan.append(RowGroup(start=row, rows=s.rows, cache=s.cache, may_skip=may_skip))
            row += s.rows
        return self._block_cache.forward(self.backend, inputs, plan, lora)

    def _batch(self, states: Sequence[DenoiseState]) -> DiTInputs:
        """The forward's inputs: this step's latents and timesteps, beside the parts that stay while the batch
        keeps its members (`_static_inputs`)."""
        def rep(t: torch.Tensor, s: DenoiseState) -> torch.Tensor:
            return t.expand(s.rows, *t.shape[1:])

        timestep = torch.cat([s.timesteps[s.step_index].expand(s.rows) for s in states])
        video_timestep = None
        if any(s.mask is not None for s in states):
            # Per-token timesteps: conditioning tokens sit at t = 0 (LTX2ImageToVideoPipeline).
            video_timestep = torch.cat([
                s.timesteps[s.step_index] * (1 - rep(s.mask, s)) if s.mask is not None
                else s.timesteps[s.step_index].expand(s.rows, s.shape.video_tokens) for s in states])
        return DiTInputs(
            video=torch.cat([rep(s.latents, s) for s in states]),
            audio=torch.cat([rep(s.audio_latents, s) for s in states]),
            timestep=timestep,
            video_timestep=video_timestep,
            **self._static_inputs(states),
        )

    def _static_inputs(self, states: Sequence[DenoiseState]) -> dict[str, torch.Tensor]:
        """Text contexts, their mask and RoPE coordinates of a batch, concatenated once and kept while the same
        requests step together (vLLM's persistent input batch): rebuilt only when one joins or leaves. A few
        recent batches are kept, so buckets that take turns do not rebuild each other's."""
        key = tuple(s.request_id for s in states)
        found = self._static.get(key)
        if found is not None and all(a is b for a, b in zip(found[0], states, strict=True)):
            return found[1]

        def rep(t: torch.Tensor, s: DenoiseState) -> torch.Tensor:
            return t.expand(s.rows, *t.shape[1:])

        inputs = {
            "video_context": torch.cat([s.video_context for s in states]),
            "audio_context": torch.cat([s.audio_context for s in states]),
            "context_mask": torch.cat([s.context_mask for s in states]),
            "video_coords": torch.cat([rep(s.video_coords, s) for s in states]),
            "audio_coords": torch.cat([rep(s.audio_coords, s) for s in states]),
        }
        self._static[key] = (tuple(states), inputs)
        return inputs

    @staticmethod
    def _update(s: DenoiseState, video_v: torch.Tensor, audio_v: torch.Tensor) -> None:
        """Guidance and the Euler update for one request (the pipeline's operations, in order)."""
        i, p = s.step_index, s.params
        sigma, sigma_next = s.sigmas[i], s.sigmas[i + 1]
        video_next = _euler(s.latents, _guided_velocity(s.latents, video_v, sigma, s.cfg, p.guidance_scale,
                                                        p.guidance_rescale), sigma, sigma_next)
        # Conditioning tokens stay clean; only the others move along the schedule.
        s.latents = video_next if s.mask is None else torch.where(s.mask[..., None] > 0, s.latents, video_next)
        s.audio_latents = _euler(s.audio_latents, _guided_velocity(
            s.audio_latents, audio_v, sigma, s.cfg, p.audio_guidance_scale, p.audio_guidance_rescale),
            sigma, sigma_next)
        s.step_index += 1

    # -- checkpoints ---------------------------------------------------------------------
    @functools.cached_property
    def fingerprint(self) -> str:
        """What a checkpoint names this model by (engines/denoise_checkpoint.py)."""
        return denoise_checkpoint.weights_fingerprint(self.transformer)

    def checkpoint(self, state: DenoiseState) -> bytes:
        """`state` at its step boundary, as bytes another replica of this model can resume from."""
        return denoise_checkpoint.encode(state, self.fingerprint)

    def resume(self, state: DenoiseState, data: bytes) -> int:
        """Put a checkpoint into `state`, freshly prepared for the same request; the step it resumes at
        (`denoise_checkpoint.CheckpointMismatch` if the bytes are not this request's on this model)."""
        return denoise_checkpoint.restore(state, data, self.fingerprint)

    # -- result --------------------------------------------------------------------------
    @staticmethod
    def result(state: DenoiseState) -> DenoisedLatents:
        if not state.done:
            raise ValueError(f"request {state.request_id} is at step {state.step_index} of {state.num_steps}")
        return DenoisedLatents(request_id=state.request_id, shape=state.shape,
                               video=state.latents[0].float().cpu().numpy(),
                               audio=state.audio_latents[0].float().cpu().numpy())


def _guided_velocity(x: torch.Tensor, pred: torch.Tensor, sigma: torch.Tensor, cfg: bool,
                     scale: float, rescale: float) -> torch.Tensor:
    """CFG in x0 space (delta form) + guidance rescale, back to velocity. `pred` rows: (uncond, cond)."""
    if cfg:
        uncond, cond = pred[0:1], pred[1:2]
        x0 = x - cond * sigma
        guided = x0 + (scale - 1) * (x0 - (x - uncond * sigma))
    else:
        x0 = x - pred * sigma
        guided = x0 + 0
    if rescale > 0:
        guided = rescale_noise_cfg(guided, x0, guidance_rescale=rescale)
    return (x - guided) / sigma


def _euler(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    return (x.to(torch.float32) + (sigma_next - sigma) * v).to(v.dtype)
