"""MP4 muxing (H.264 yuv420p + AAC) and probing, with PyAV.

Frames are encoded as they arrive, so a long clip never sits in memory whole. Frame rates
are exact fractions (30000/1001 stays 30000/1001), and the audio is padded or trimmed to the
video's duration so both streams end together (its ends faded over 5 ms, so neither adds a click).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class Waveform:
    samples: np.ndarray  # [channels, samples] float32 in [-1, 1]
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.samples.shape[1] / self.sample_rate


@dataclass(frozen=True)
class EncodeSettings:
    """x264 settings; the defaults favour speed at good quality."""

    crf: int = 20
    preset: str = "veryfast"
    audio_bitrate: int = 128_000
    threads: int = 0  # x264 worker threads; 0: x264's own choice (1.5 per core, whatever else runs)


@dataclass(frozen=True)
class MediaInfo:
    """What an MP4 holds, read back with PyAV."""

    path: str
    size_bytes: int
    video_codec: str
    width: int
    height: int
    pix_fmt: str
    fps: Fraction
    video_frames: int
    video_seconds: float
    audio_codec: str | None
    audio_sample_rate: int | None
    audio_channels: int | None
    audio_seconds: float | None

    def summary(self) -> str:
        audio = (f"{self.audio_codec} {self.audio_sample_rate} Hz x{self.audio_channels}, {self.audio_seconds:.3f} s"
                 if self.audio_codec else "no audio")
        return (f"video {self.video_codec} {self.width}x{self.height} {self.pix_fmt} @ {_fps_str(self.fps)} fps, "
                f"{self.video_frames} frames, {self.video_seconds:.3f} s | audio {audio}")


def _fps_str(fps: Fraction) -> str:
    return str(fps.numerator) if fps.denominator == 1 else f"{fps.numerator}/{fps.denominator} (~{float(fps):.3f})"


FADE_SECONDS = 0.005


def fit_audio(samples: np.ndarray, length: int, sample_rate: int) -> np.ndarray:
    """Pad with silence or trim to exactly `length` samples ([channels, samples]), the ends faded in and out
    over `FADE_SECONDS`: a waveform that starts away from zero, is cut, or stops short of the video (the causal
    audio VAE's output is ~30 ms short) would otherwise step to or from silence there, and a step is a click."""
    out = np.array(samples[:, :length], dtype=np.float32)
    n = min(round(FADE_SECONDS * sample_rate), out.shape[1] // 2)
    if n > 0:
        ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)
        out[:, :n] *= ramp
        out[:, -n:] *= ramp[::-1]
    return np.pad(out, ((0, 0), (0, length - out.shape[1])))


class Mp4Writer:
    """Streams uint8 RGB frames and a waveform into an MP4; use as a context manager."""

    def __init__(self, path: str | Path, *, width: int, height: int, fps: Fraction, num_frames: int,
                 audio: Waveform | None, settings: EncodeSettings = EncodeSettings()) -> None:
        self.path, self.fps, self.num_frames = str(path), Fraction(fps), num_frames
        self._container = av.open(self.path, mode="w", options={"movflags": "+faststart"})
        self._video = self._container.add_stream("libx264", rate=self.fps)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.codec_context.time_base = 1 / self.fps
        self._video.options = {"crf": str(settings.crf), "preset": settings.preset}
        # The codec context's count, not an x264 option "threads": PyAV opens the codec with the context's own
        # (0: auto, 1.5 threads per core), and the option did not reach it (measured: run to run, the same frames
        # came out as other bytes, as auto threading does, and a set count changed that).
        self._video.codec_context.thread_count = settings.threads
        self._written = 0
        self._audio_stream = None
        self._audio_sent = 0
        if audio is not None:
            total = round(num_frames / self.fps * audio.sample_rate)
            self._samples = np.ascontiguousarray(fit_audio(audio.samples, total, audio.sample_rate), dtype=np.float32)
            self._rate = audio.sample_rate
            self._audio_stream = self._container.add_stream("aac", rate=audio.sample_rate)
            self._audio_stream.layout = "stereo" if self._samples.shape[0] == 2 else "mono"
            self._audio_stream.bit_rate = settings.audio_bitrate

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 frames [f, H, W, 3]; frames past `num_frames` are dropped."""
        frames = frames[: max(0, self.num_frames - self._written)]
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self._written
            self._container.mux(self._video.encode(frame))
            self._written += 1
        self._send_audio(round(self._written / self.fps * self._rate) if self._audio_stream else 0)

    def _send_audio(self, upto: int) -> None:
        """Encode audio up to sample `upto`, so audio and video packets interleave."""
        if self._audio_stream is None or upto <= self._audio_sent:
            return
        chunk = self._samples[:, self._audio_sent:upto]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp",
                                           layout=self._audio_stream.layout.name)
        frame.sample_rate, frame.pts = self._rate, self._audio_sent
        self._container.mux(self._audio_stream.encode(frame))
        self._audio_sent = upto

    def close(self) -> None:
        if self._written != self.num_frames:
            self._container.close()
            raise ValueError(f"{self.path}: got {self._written} frames, expected {self.num_frames}")
        self._container.mux(self._video.encode(None))
        if self._audio_stream is not None:
            self._send_audio(self._samples.shape[1])
            self._container.mux(self._audio_stream.encode(None))
        self._container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._container.close()


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], *, width: int, height: int, fps: Fraction,
              num_frames: int, audio: Waveform | None, settings: EncodeSettings = EncodeSettings()) -> None:
    """Encode an iterable of uint8 frame chunks [f, H, W, 3] (and audio) into `path`."""
    with Mp4Writer(path, width=width, height=height, fps=fps, num_frames=num_frames, audio=audio,
                   settings=settings) as writer:
        for chunk in frames:
            writer.write(chunk)


def probe(path: str | Path) -> MediaInfo:
    """Streams, sizes and durations of an MP4 (durations from the streams' own timestamps)."""
    path = str(path)
    with av.open(path) as c:
        v = c.streams.video[0]
        a = c.streams.audio[0] if c.streams.audio else None
        fps = Fraction(v.average_rate) if v.average_rate else Fraction(0)
        v_frames = v.frames or sum(1 for _ in c.demux(v))
        v_seconds = float(v.duration * v.time_base) if v.duration else v_frames / float(fps)
        info = MediaInfo(
            path=path, size_bytes=Path(path).stat().st_size, video_codec=v.codec_context.name,
            width=v.codec_context.width, height=v.codec_context.height,
            pix_fmt=v.codec_context.pix_fmt or "", fps=fps, video_frames=v_frames, video_seconds=v_seconds,
            audio_codec=a.codec_context.name if a else None, audio_sample_rate=a.rate if a else None,
            audio_channels=a.codec_context.channels if a else None,
            audio_seconds=float(a.duration * a.time_base) if a and a.duration else None)
    return info
