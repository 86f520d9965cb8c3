"""The visible watermark: stamped on every frame, found after H.264, absent from unmarked video."""

from fractions import Fraction

import av
import numpy as np
import pytest

from engines.mp4 import Mp4Writer
from engines.watermark import WatermarkConfig, detect, stamp


@pytest.mark.parametrize("size", [(64, 64), (256, 256), (720, 1280), (1088, 1920)])
@pytest.mark.parametrize("position", ["bottom-right", "top-left"])
def test_stamp_then_detect(size, position):
    cfg = WatermarkConfig(position=position)
    frames = np.random.default_rng(0).integers(0, 255, (3, *size, 3), dtype=np.uint8)
    marked = stamp(frames, cfg)
    assert marked.shape == frames.shape and not np.array_equal(marked, frames)
    assert all(detect(f, cfg)[0] for f in marked)
    assert not any(detect(f, cfg)[0] for f in frames)


def test_survives_h264_and_is_absent_from_unmarked(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (24, 64, 96, 3), dtype=np.uint8)
    for name, data in (("marked", stamp(frames)), ("plain", frames)):
        with Mp4Writer(tmp_path / f"{name}.mp4", width=96, height=64, fps=Fraction(24), num_frames=24,
                       audio=None) as w:
            w.write(data)
    with av.open(str(tmp_path / "marked.mp4")) as c:
        assert all(detect(f.to_ndarray(format="rgb24"))[0] for f in c.decode(video=0))
    with av.open(str(tmp_path / "plain.mp4")) as c:
        assert not any(detect(f.to_ndarray(format="rgb24"))[0] for f in c.decode(video=0))


def test_opacity_and_disabled():
    frames = np.full((1, 128, 128, 3), 128, np.uint8)
    faint = stamp(frames, WatermarkConfig(opacity=0.5))
    assert detect(faint[0], WatermarkConfig(opacity=0.5))[0]
    assert np.array_equal(stamp(frames, WatermarkConfig(enabled=False)), frames)
    with pytest.raises(ValueError):
        WatermarkConfig(opacity=0.1)
