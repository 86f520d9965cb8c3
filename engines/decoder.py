"""Stage 3: latents -> video frames (video VAE) and a waveform (audio VAE + vocoder).

Video is decoded in chunks so memory stays bounded up to 1080p and 20 s: temporal chunks
of latent frames, each in spatial tiles. The LTX-2 video decoder is causal in time, so a
chunk is decoded with some *past* context and a tile with a halo on every side; context and
halo are then cut away. With context and halo at least the decoder's receptive field a
chunked decode equals a whole decode (tested); shorter ones trade exactness for speed.
Frames stream out chunk by chunk, so a caller can encode them without holding the clip.

A chunked decode is planned first (`chunk_plan`: per chunk, the `DecodeUnit`s, one VAE decoder
call each) and then run by a `UnitRunner`: here, every unit in this process; engines/parallel
spreads the units of one video over several ranks. Either way each unit is the same decoder call
on the same latents, assembled the same way, so the frames are the same bits.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import LTX2Pipeline
from diffusers.image_processor import VaeImageProcessor

from engines.config import DecodeConfig, ModelConfig
from engines.model_loader import DECODER_PARTS, Components, ComponentSource
from engines.mp4 import EncodeSettings, MediaInfo, Mp4Writer, Waveform, probe
from engines.params import GenerationParams, crops
from engines.runtime import configure_threads
from engines.stage_io import DenoisedLatents, LatentGeometry

FrameFilter = Callable[[np.ndarray, int], np.ndarray]
"""(uint8 frames [f, H, W, 3], index of the first) -> frames: applied before encoding."""


Span = tuple[int, int]  # [start, stop) along one axis


@dataclass(frozen=True)
class DecodeUnit:
    """One VAE decoder call of a chunked decode: a window of the latents (past context and halo
    included) and the part of its output the clip keeps, with where that part goes in its chunk."""

    latent_frames: Span
    latent_rows: Span
    latent_cols: Span
    keep_frames: Span  # of the decoder's output: pixel frames, rows, columns kept
    keep_rows: Span
    keep_cols: Span
    dest_rows: Span  # where the kept pixels go in the chunk's frames
    dest_cols: Span

    @property
    def kept_size(self) -> tuple[int, int, int]:
        """(pixel frames, rows, columns) of the kept part."""
        return tuple(b - a for a, b in (self.keep_frames, self.keep_rows, self.keep_cols))  # type: ignore[return-value]


@dataclass(frozen=True)
class DecodeChunk:
    """One temporal chunk of a chunked decode: its pixel frames, and the units that fill them."""

    frames: int
    height: int
    width: int
    units: tuple[DecodeUnit, ...]


class UnitRunner:
    """Runs the units of a chunked decode, chunk by chunk: here, in this process
    (engines/parallel/decode.py spreads them over the ranks of a group)."""

    def run(self, decoder: Decoder, z: torch.Tensor, plan: Sequence[DecodeChunk],
            decode: DecodeConfig) -> Generator[list[torch.Tensor], None, None]:
        """Per chunk of `plan`, in order: the kept output of each of its units, in unit order."""
        for chunk in plan:
            yield [decoder.decode_unit(z, unit) for unit in chunk.units]


class Decoder:
    """Video VAE decoder + audio VAE decoder + vocoder."""

    def __init__(self, config: ModelConfig, components: Components | None = None,
                 geometry: LatentGeometry | None = None, runner: UnitRunner | None = None) -> None:
        """`runner`: who decodes the units of a chunked decode (default: this process)."""
        configure_threads(config)
        self.config = config
        source = ComponentSource(config)
        comps = components or source.load(DECODER_PARTS)
        self.geometry = geometry or source.geometry()
        self.vae, self.audio_vae, self.vocoder = comps.vae, comps.audio_vae, comps.vocoder
        self.device = torch.device(config.device)
        self.runner = runner or UnitRunner()

    # -- audio ---------------------------------------------------------------------------
    @torch.inference_mode()
    def decode_audio(self, latents: DenoisedLatents) -> Waveform:
        g = self.geometry
        packed = torch.from_numpy(latents.audio).to(self.device)[None]
        packed = LTX2Pipeline._denormalize_audio_latents(packed, self.audio_vae.latents_mean,
                                                         self.audio_vae.latents_std)
        spec = LTX2Pipeline._unpack_audio_latents(packed, latents.shape.audio_frames,
                                                  num_mel_bins=g.latent_mel_bins)
        mel = self.audio_vae.decode(spec.to(self.audio_vae.dtype), return_dict=False)[0]
        wav = self.vocoder(mel)
        return Waveform(samples=wav[0].float().clamp(-1, 1).cpu().numpy(), sample_rate=g.audio_output_sample_rate)

    # -- video ---------------------------------------------------------------------------
    def _latents_5d(self, latents: DenoisedLatents) -> torch.Tensor:
        """Packed tokens -> denormalized [1, C, F, H, W] in the VAE's dtype."""
        g, s = self.geometry, latents.shape
        packed = torch.from_numpy(latents.video).to(self.device)[None]
        z = LTX2Pipeline._unpack_latents(packed, s.frames, s.height, s.width, g.patch_size, g.patch_size_t)
        z = LTX2Pipeline._denormalize_latents(z, self.vae.latents_mean, self.vae.latents_std,
                                              self.vae.config.scaling_factor)
        return z.to(self.vae.dtype)

    def _temb(self) -> torch.Tensor | None:
        if not self.geometry.timestep_conditioned_vae:
            return None
        return torch.tensor([self.geometry.decode_timestep], device=self.device, dtype=self.vae.dtype)

    @torch.inference_mode()
    def decode_video(self, latents: DenoisedLatents, chunked: bool = True) -> torch.Tensor:
        """All frames as float [F, H, W, 3] in [0, 1] (small outputs and tests; see iter_video)."""
        if not chunked:
            z = self._latents_5d(latents)
            return _to_frames(self.vae.decode(z, self._temb(), return_dict=False)[0])
        return torch.cat(list(self.iter_video(latents)))

    @torch.inference_mode()
    def iter_video(self, latents: DenoisedLatents, decode: DecodeConfig | None = None) -> Iterator[torch.Tensor]:
        """Frames in temporal chunks, float [f, H, W, 3] in [0, 1]; memory bounded by the chunk."""
        d = decode or self.config.decode
        z = self._latents_5d(latents)
        if z.shape[2] * z.shape[3] * z.shape[4] <= d.whole_max_latents:  # small: one pass, nothing recomputed
            yield _to_frames(self.vae.decode(z, self._temb(), return_dict=False)[0])
            return
        plan = self.chunk_plan(tuple(z.shape), d)
        parts = self.runner.run(self, z, plan, d)
        try:
            for chunk, chunk_parts in zip(plan, parts, strict=True):
                yield _assemble(chunk, chunk_parts)
        finally:
            parts.close()  # a runner spread over ranks settles what is still in flight

    def chunk_plan(self, latent_shape: tuple[int, ...], d: DecodeConfig) -> list[DecodeChunk]:
        """The chunks and units of a chunked decode of latents [1, C, frames, h, w] (every rank that
        takes part computes the same plan from the same numbers)."""
        _, _, frames, h, w = latent_shape
        t, scale = self.geometry.temporal_compression, self.geometry.spatial_compression
        tile, halo = d.tile_latent_size, d.tile_halo_latents
        if h <= tile and w <= tile:  # one tile, no halo
            tile, halo = max(h, w), 0
        plan = []
        for start in range(0, frames, d.chunk_latent_frames):
            end = min(frames, start + d.chunk_latent_frames) - 1
            first = max(0, start - d.context_latent_frames)
            # Decoding latents [first..end] yields pixel frames [t*first .. t*end] of the whole clip;
            # this chunk owns [0 .. t*end] if it starts the clip, else [t*start - t + 1 .. t*end].
            own_from = 0 if start == 0 else t * start - t + 1
            lo, n = own_from - t * first, t * end - own_from + 1
            units = []
            for i in range(0, h, tile):
                for j in range(0, w, tile):
                    i0, i1 = max(0, i - halo), min(h, i + tile + halo)
                    j0, j1 = max(0, j - halo), min(w, j + tile + halo)
                    ih, jw = min(tile, h - i) * scale, min(tile, w - j) * scale
                    oi, oj = (i - i0) * scale, (j - j0) * scale
                    units.append(DecodeUnit(
                        latent_frames=(first, end + 1), latent_rows=(i0, i1), latent_cols=(j0, j1),
                        keep_frames=(lo, lo + n), keep_rows=(oi, oi + ih), keep_cols=(oj, oj + jw),
                        dest_rows=(i * scale, i * scale + ih), dest_cols=(j * scale, j * scale + jw)))
            plan.append(DecodeChunk(frames=n, height=h * scale, width=w * scale, units=tuple(units)))
        return plan

    def decode_unit(self, z: torch.Tensor, unit: DecodeUnit) -> torch.Tensor:
        """The kept frames of one unit's decoder call, float [f, rows, cols, 3] in [0, 1] (converted
        per unit: the conversion is elementwise, so it is the same bits as converting the chunk)."""
        (f0, f1), (i0, i1), (j0, j1) = unit.latent_frames, unit.latent_rows, unit.latent_cols
        part = self.vae.decoder(z[:, :, f0:f1, i0:i1, j0:j1], self._temb())
        (a, b), (c, e), (g, k) = unit.keep_frames, unit.keep_rows, unit.keep_cols
        return _to_frames(part[:, :, a:b, c:e, g:k])

    def empty_unit_frames(self, unit: DecodeUnit) -> torch.Tensor:
        """An uninitialised tensor shaped like `decode_unit(z, unit)` (to receive it into)."""
        return torch.empty(*unit.kept_size, self.vae.config.out_channels, device=self.device)

    def render_mp4(self, latents: DenoisedLatents, params: GenerationParams, path: str | Path, *,
                   frame_filter: FrameFilter | None = None,
                   settings: EncodeSettings | None = None) -> MediaInfo:
        """Decode and encode straight into an MP4, chunk by chunk; returns what was written.
        The encoder keeps to the engine's thread budget: left to itself x264 starts 1.5 threads
        per core and takes the cores the Denoiser beside it is stepping on."""
        settings = settings or EncodeSettings(threads=self.config.num_threads or 0)
        audio = self.decode_audio(latents)
        width, height = params.delivered
        with Mp4Writer(path, width=width, height=height, fps=params.fps,
                       num_frames=params.output_frames, audio=audio, settings=settings) as writer:
            first = 0
            for chunk in self.iter_video(latents):
                frames = frames_to_uint8(chunk)
                if params.fit is not None:
                    frames = fit_frames(frames, width, height)
                if frame_filter is not None:
                    frames = frame_filter(frames, first)
                writer.write(frames)
                first += len(frames)
        return probe(path)


def fit_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 frames [F, H, W, 3] at exactly width x height: scaled (bilinear, antialiased) so they cover it
    where they do not already, then centre-cropped."""
    _, h, w, _ = frames.shape
    scale = max(width / w, height / h)
    if not crops((w, h), (width, height)):
        sw, sh = max(width, round(w * scale)), max(height, round(h * scale))
        t = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        t = torch.nn.functional.interpolate(t, size=(sh, sw), mode="bilinear", align_corners=False,
                                            antialias=scale < 1.0)
        frames = t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        h, w = sh, sw
    top, left = (h - height) // 2, (w - width) // 2
    return np.ascontiguousarray(frames[:, top:top + height, left:left + width])


def _assemble(chunk: DecodeChunk, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """A chunk's frames [frames, H, W, 3] from the kept frames of its units."""
    out = parts[0].new_empty(chunk.frames, chunk.height, chunk.width, parts[0].shape[-1])
    for unit, part in zip(chunk.units, parts, strict=True):
        (r0, r1), (c0, c1) = unit.dest_rows, unit.dest_cols
        out[:, r0:r1, c0:c1] = part
    return out


def _to_frames(video: torch.Tensor) -> torch.Tensor:
    """VAE output [1, 3, F, H, W] in [-1, 1] -> [F, H, W, 3] in [0, 1] (diffusers' denormalize)."""
    return VaeImageProcessor.denormalize(video[0].float()).permute(1, 2, 3, 0)


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[f, H, W, 3] in [0, 1] -> uint8, rounded like diffusers' numpy_to_pil."""
    return (frames * 255).round().to(torch.uint8).cpu().numpy()
