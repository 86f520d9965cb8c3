"""`LocalEngine`: the front door domain, dispatcher and denoise loop in one process (what `kino run` drives)."""

from __future__ import annotations

import dataclasses

import av
import pytest

from engines.watermark import detect
from serving.config import load_config
from serving.errors import FailedPrecondition, InvalidArgument
from serving.jobs import JobStatus
from serving.local_engine import LocalEngine
from serving.videos import CreateVideo


@pytest.fixture
def cfg(tmp_path):
    return load_config({"batching": {"measure_batches": False, "max_batch_size": 4, "max_tokens": 2000},
                        "provenance": {"dev_chain_dir": str(tmp_path / "credentials")}}, environ={})


def test_jobs_run_through_the_dispatcher_and_one_denoise_loop_batching_across_them(cfg, staged, tmp_path):
    with LocalEngine.open(dataclasses.replace(cfg, model=staged.config), staged, state_dir=tmp_path) as engine:
        assert engine.denoise_loop.scheduler.max_tokens == 2000  # the replica's budget, from the config
        jobs = [engine.submit(CreateVideo(prompt=f"a kite {i}", size="64x64", seconds=0.5, steps=3, seed=i))
                for i in range(2)]
        seen: list = []
        done = [engine.wait(job, seen.append) for job in jobs]
        assert [j.status for j in done] == [JobStatus.COMPLETED] * 2
        assert max(e.batch_size for e in seen) == 2  # both jobs' steps shared forwards
        assert [e.step for e in seen if e.stage.value == "denoising" and e.step] == [1, 2, 3]
        path = engine.save(done[0], tmp_path / "out.mp4")
        times = engine.times(done[0])
    assert times.encode > 0 and times.denoise > 0 and times.decode > 0 and times.two_stage is None
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 12 and all(detect(f)[0] for f in frames)


def test_the_front_doors_refusals_come_first(cfg, staged, tmp_path):
    with LocalEngine.open(dataclasses.replace(cfg, model=staged.config), staged, state_dir=tmp_path) as engine:
        with pytest.raises(InvalidArgument) as over:
            engine.submit(CreateVideo(prompt="x", size="512x512", seconds=4.0))
        assert over.value.field == "size" and "at most 2000 (batching.max_tokens)" in str(over.value)
        with pytest.raises(FailedPrecondition, match="graphic_violence"):
            engine.submit(CreateVideo(prompt="a gory decapitation scene"))
        with pytest.raises(InvalidArgument, match="steps"):
            engine.submit(CreateVideo(prompt="x", steps=1000))
        assert engine.services.videos.store.blocking.count_by_status(JobStatus.QUEUED)[JobStatus.QUEUED] == 0
