"""What a cameo keeps from its recording: one reference frame and a voice clip (PyAV)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
import PIL.Image

from serving.errors import InvalidArgument

VOICE_RATE = 16000
MAX_VOICE_SECONDS = 10.0


@dataclass(frozen=True)
class Extracted:
    reference: PIL.Image.Image
    voice_wav: bytes | None  # 16 kHz mono PCM WAV, up to 10 s


def extract(recording: bytes) -> Extracted:
    """The middle frame of the recording and its first seconds of audio; INVALID_ARGUMENT if unreadable."""
    try:
        with av.open(io.BytesIO(recording)) as c:
            frames = [f.to_image() for f in c.decode(video=0)]
        voice = _voice(recording)
    except (av.error.FFmpegError, ValueError, IndexError) as e:
        raise InvalidArgument(f"recording is not allowed: a video file (MP4, MOV or WebM) of yourself, "
                              f"could not be read ({type(e).__name__})", field="recording") from None
    if not frames:
        raise InvalidArgument("recording is not allowed: it has no video frames", field="recording")
    return Extracted(reference=frames[len(frames) // 2].convert("RGB"), voice_wav=voice)


def _voice(recording: bytes) -> bytes | None:
    with av.open(io.BytesIO(recording)) as c:
        if not c.streams.audio:
            return None
        resampler = av.AudioResampler(format="s16", layout="mono", rate=VOICE_RATE)
        chunks = []
        for frame in c.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return None
    samples = np.concatenate(chunks)[: int(VOICE_RATE * MAX_VOICE_SECONDS)]
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=VOICE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = VOICE_RATE
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()
