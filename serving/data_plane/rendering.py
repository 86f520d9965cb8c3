"""The decode stage's work, independent of Ray: conditioning in, watermarked and signed MP4 out.

The Decoder deployment wraps one `Renderer` per replica and `kino run` uses one in its own
process: every MP4 Kino writes is marked, muxed and signed by `render_file`, the one way to make one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import PIL.Image

from engines.decoder import Decoder
from engines.media_encoder import MediaEncoder
from engines.mp4 import MediaInfo
from engines.params import GenerationParams
from engines.stage_io import DenoisedLatents, VideoConditioning
from engines.watermark import WatermarkConfig, stamp
from serving.artifacts import Artifact, ArtifactStore
from serving.provenance.claim import Claim
from serving.provenance.credentials import ContentCredentials

log = logging.getLogger(__name__)


class Renderer:
    def __init__(self, decoder: Decoder, media: MediaEncoder, artifacts: ArtifactStore | None,
                 credentials: ContentCredentials, watermark: WatermarkConfig) -> None:
        """`artifacts`: where inputs are read and outputs put (None: only `render_file` is used)."""
        self.decoder, self.media, self.artifacts = decoder, media, artifacts
        self.credentials, self.watermark = credentials, watermark

    def condition(self, params: GenerationParams, image_key: str | None, parent_key: str | None,
                  strength: float) -> VideoConditioning:
        """A remix source or a first frame (image-to-video, cameo reference) as conditioning latents."""
        if parent_key:
            return self.media.encode_video(self.artifacts.local_path(parent_key), params, strength)
        if not image_key:
            raise ValueError("nothing to condition on")
        with PIL.Image.open(self.artifacts.local_path(image_key)) as image:
            return self.media.encode_image(image, params)

    def render(self, latents: DenoisedLatents, params: GenerationParams, key: str, claim: Claim,
               parent_key: str | None = None) -> Artifact:
        """`render_file` into the artifact store under `key`."""
        assert self.artifacts is not None, "a Renderer without an artifact store only renders files"
        signed = self.artifacts.scratch_path(key)
        try:
            parent: Path | None = self.artifacts.local_path(parent_key) if parent_key else None
            media = self.render_file(latents, params, signed, claim, parent=parent)
            stored = self.artifacts.put_file(key, signed)
        finally:
            signed.unlink(missing_ok=True)
        log.info("rendered %s: %s", key, media.summary())
        return stored

    def render_file(self, latents: DenoisedLatents, params: GenerationParams, path: Path, claim: Claim,
                    parent: Path | None = None) -> MediaInfo:
        """Decode with the visible mark burned into every frame, mux, sign once into `path` (an unsigned
        MP4 never stays behind); what was written."""
        muxed = path.with_name(f".{path.stem}.unsigned.mp4")  # PyAV picks the container by the suffix
        try:
            media = self.decoder.render_mp4(latents, params, muxed,
                                            frame_filter=lambda frames, _first: stamp(frames, self.watermark))
            self.credentials.sign(muxed, path, claim, parent=parent)
        finally:
            muxed.unlink(missing_ok=True)
        return media
