"""MP4 output: H.264 yuv420p + AAC, durations that agree, exact fractional frame rates."""

from fractions import Fraction

import av
import numpy as np
import pytest

from engines.mp4 import FADE_SECONDS, Mp4Writer, Waveform, fit_audio, probe
from engines.params import GenerationRequest


@pytest.mark.parametrize("fps, seconds", [(Fraction(24), 1.0), (Fraction(30000, 1001), 1.5), (Fraction(25), 0.5)])
def test_generated_mp4_has_h264_and_aac_of_equal_duration(staged, tmp_path, fps, seconds):
    result = staged.generate(GenerationRequest(prompt="a bell ringing", seed=1, fps=fps, seconds=seconds),
                             tmp_path / "out.mp4")
    info = probe(result.path)
    assert info.video_codec == "h264" and info.pix_fmt == "yuv420p"
    assert info.audio_codec == "aac" and info.audio_channels == 2 and info.audio_sample_rate == 24000
    assert info.fps == fps  # exact: 30000/1001 is not truncated to 29 or 30
    assert info.video_frames == round(seconds * fps)
    assert abs(info.video_seconds - info.audio_seconds) <= 1 / float(fps)
    assert abs(info.video_seconds - info.video_frames / float(fps)) <= 1 / float(fps)
    # Decoding really yields every frame, and the audio carries signal.
    with av.open(str(result.path)) as c:
        assert sum(1 for _ in c.decode(video=0)) == info.video_frames
    with av.open(str(result.path)) as c:
        peak = max(float(np.abs(f.to_ndarray()).max()) for f in c.decode(audio=0))
    assert peak > 0.0


@pytest.mark.parametrize("audio_seconds", [0.5, 2.5])
def test_audio_is_padded_or_trimmed_to_the_video(tmp_path, audio_seconds):
    sr, fps, frames = 24000, Fraction(24), 48  # 2.0 s of video
    tone = np.sin(np.linspace(0, 440 * 2 * np.pi * audio_seconds, int(sr * audio_seconds))).astype(np.float32)
    path = tmp_path / f"a{audio_seconds}.mp4"
    with Mp4Writer(path, width=64, height=64, fps=fps, num_frames=frames,
                   audio=Waveform(np.stack([tone, tone]) * 0.5, sr)) as w:
        w.write(np.zeros((frames, 64, 64, 3), np.uint8))
    info = probe(path)
    assert info.video_frames == frames
    assert abs(info.audio_seconds - 2.0) <= 1 / 24
    with av.open(str(path)) as c:
        samples = sum(f.samples for f in c.decode(audio=0))
    assert abs(samples - 2.0 * sr) <= 2048  # AAC codes whole 1024-sample frames (+ priming)


def test_a_dc_waveform_padded_to_the_video_fades_instead_of_stepping():
    """A waveform that starts away from zero and stops short of the video would step from and to silence (a
    click, broadband); it is faded over FADE_SECONDS at both ends and unchanged between."""
    sr = 24000
    held = np.full((2, sr // 2), 0.5, np.float32)
    out = fit_audio(held, sr, sr)
    n = round(FADE_SECONDS * sr)
    assert out.shape == (2, sr) and not out[:, sr // 2:].any()
    assert np.abs(np.diff(out, axis=1)).max() < 0.5 / n * 2  # no sample-to-sample step, only the ramps
    assert np.array_equal(out[:, n:sr // 2 - n], held[:, n:-n])
    trimmed = fit_audio(np.full((2, 2 * sr), 0.5, np.float32), sr, sr)
    assert trimmed.shape == (2, sr) and abs(trimmed[0, -1]) < 0.01 and abs(trimmed[0, 0]) < 0.01


def test_writer_refuses_a_short_clip(tmp_path):
    w = Mp4Writer(tmp_path / "short.mp4", width=64, height=64, fps=Fraction(24), num_frames=10, audio=None)
    w.write(np.zeros((4, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="got 4 frames, expected 10"):
        w.close()
