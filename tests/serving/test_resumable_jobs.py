"""Resumable jobs through the dispatcher and the stages in this process (no Ray): a denoiser lost mid-job costs
only the steps since the last checkpoint and the video is the same, a drained denoiser hands its job back
checkpointed, and a job's checkpoint goes when it ends (completed, cancelled, deleted)."""

from __future__ import annotations

import asyncio
import contextlib

import av
import numpy as np

from serving.config import QueueConfig
from serving.control_plane.dispatcher import Dispatcher
from serving.control_plane.job_runner import JobCheckpoints
from serving.control_plane.progress import ProgressHub
from serving.data_plane.denoise_loop import DenoiseLoop
from serving.data_plane.scheduler import StepScheduler
from serving.data_plane.stages import Checkpointed, Denoised, DenoiseEvent, StageUnavailable, job_of
from serving.jobs import JobStatus, denoise_checkpoint_key
from tests.serving.test_dispatcher import InProcessStages, _run_until, _until_step

STEPS = 12


class KeepsLatents(InProcessStages):
    """Records each denoise request's finished latents (what goes to the decoder: frames and audio before
    muxing are a pure function of them)."""

    latents: dict[str, object] = {}

    async def denoise(self, request_id, params, embedding, priority, conditioning=None, checkpointing=None):
        async for item in super().denoise(request_id, params, embedding, priority, conditioning, checkpointing):
            if isinstance(item, Denoised):
                KeepsLatents.latents[job_of(request_id)] = item.latents
            yield item


class LosesItsDenoiser(KeepsLatents):
    """Fault injection: the first denoise request's replica is lost once the job passed step `lost_after` and the
    runner has recorded a checkpoint at or after it (when checkpointing; else right after that step): what a node
    loss does to the stream. What the loop wrote stays in the artifact store, as in an object store. `seen`: the
    steps the lost attempt delivered."""

    def __init__(self, *args, lost_after: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.lost_after, self.losses, self.seen = lost_after, 1, 0

    async def denoise(self, request_id, params, embedding, priority, conditioning=None, checkpointing=None):
        # Closed when the loss is raised: a lost node's loop steps and writes no more.
        async with contextlib.aclosing(super().denoise(request_id, params, embedding, priority, conditioning,
                                                       checkpointing)) as items:
            async for item in items:
                yield item
                if not self.losses:
                    continue
                if isinstance(item, DenoiseEvent):
                    self.seen = item.step
                at = item.step if isinstance(item, Checkpointed) or checkpointing is None else -1
                if at >= self.lost_after:
                    self.losses -= 1
                    raise StageUnavailable("denoiser: NodeDiedError (injected)")


def _stages(staged, artifacts, tmp_path, cls=InProcessStages, **kw):
    stages = cls(staged, artifacts, tmp_path, **kw)
    # The stages' loop writes checkpoints where the job runner reads and deletes them: the artifact store.
    stages.loop = DenoiseLoop(staged.denoiser, StepScheduler(8, 32), checkpoints=artifacts)
    return stages


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def _frames(path) -> np.ndarray:
    with av.open(str(path)) as f:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)])


def test_a_denoiser_lost_mid_job_resumes_at_its_checkpoint_and_writes_the_same_video(setup, staged, tmp_path):
    store, artifacts, add = setup
    whole = add(1, steps=STEPS)
    every = JobCheckpoints(artifacts, every_seconds=0)  # every step: the loss lands just after one
    plain = Dispatcher(store, _stages(staged, artifacts, tmp_path, KeepsLatents), QueueConfig(poll_seconds=0.05),
                       checkpoints=every)
    asyncio.run(_run_until(plain, store, [whole]))
    lossy = add(1, steps=STEPS, job_id="video_1b")  # the same request again
    stages = _stages(staged, artifacts, tmp_path, LosesItsDenoiser, lost_after=8)
    losing = Dispatcher(store, stages, QueueConfig(poll_seconds=0.05), checkpoints=every)
    asyncio.run(_run_until(losing, store, [lossy]))

    done = store.get(lossy)
    # Resumed at its newest checkpoint: the one recorded at step 8, or one the loop wrote after it (the loop runs
    # ahead of its reader: a step's checkpoint may land before the reader has seen that step).
    assert done.status == JobStatus.COMPLETED and 8 <= done.resumed_from_step < STEPS
    # Only the steps since that checkpoint were computed twice (steps counted as the runner saw them).
    assert done.denoise_steps_run == stages.seen + STEPS - done.resumed_from_step
    assert store.get(whole).denoise_steps_run == STEPS and store.get(whole).resumed_from_step is None
    assert any(e.message == f"resumed at step {done.resumed_from_step} of {STEPS}" for e in store.events(lossy))
    # The same video: the latents the decoder got are bit-identical, and so the frames and audio before muxing
    # (the VAE is deterministic); x264 itself may write other bytes for the same frames (see engines/mp4.py).
    resumed, uninterrupted = KeepsLatents.latents[lossy], KeepsLatents.latents[whole]
    np.testing.assert_array_equal(resumed.video, uninterrupted.video)
    np.testing.assert_array_equal(resumed.audio, uninterrupted.audio)
    # (64x64 frames: two x264 runs of the same frames measured 29.7-40 dB apart; another video is ~10 dB.)
    assert _psnr(_frames(artifacts.local_path(done.artifact.key)),
                 _frames(artifacts.local_path(store.get(whole).artifact.key))) > 25
    for jid in (whole, lossy):  # the checkpoints went with the jobs' ends
        assert done.checkpoint_key is None and not (artifacts.root / denoise_checkpoint_key("t", jid)).exists()


def test_without_checkpoints_a_lost_denoiser_starts_the_job_over(setup, staged, tmp_path):
    store, artifacts, add = setup
    jid = add(3, steps=STEPS)
    d = Dispatcher(store, _stages(staged, artifacts, tmp_path, LosesItsDenoiser, lost_after=8),
                   QueueConfig(poll_seconds=0.05))  # no checkpoints
    asyncio.run(_run_until(d, store, [jid]))
    job = store.get(jid)
    assert job.status == JobStatus.COMPLETED and job.resumed_from_step is None
    assert job.denoise_steps_run == STEPS + 8  # the ratio loadtests/node_loss reports: (12 + 8) / 12


def test_a_drained_denoiser_hands_its_job_back_checkpointed(setup, staged, tmp_path):
    store, artifacts, add = setup
    jid = add(4, steps=40)
    hub = ProgressHub()
    stages = _stages(staged, artifacts, tmp_path)
    d = Dispatcher(store, stages, QueueConfig(poll_seconds=0.05), progress=hub,
                   checkpoints=JobCheckpoints(artifacts, every_seconds=3600))

    async def scenario():
        task = asyncio.create_task(d.run())
        async with asyncio.timeout(120):
            await _until_step(hub, jid, 5)
            old = stages.loop
            stages.loop = DenoiseLoop(staged.denoiser, StepScheduler(8, 32), checkpoints=artifacts)  # a new replica
            handed = await old.drain()  # the old one is told to stop
            while store.get(jid).status != JobStatus.COMPLETED:
                await asyncio.sleep(0.05)
        task.cancel()
        return handed

    assert asyncio.run(scenario()) == 1
    job = store.get(jid)
    messages = [e.message for e in store.events(jid)]
    assert any(m.startswith("retrying after: the denoiser stopped at step") for m in messages), messages
    assert job.resumed_from_step is not None and job.resumed_from_step >= 5
    assert job.denoise_steps_run == 40


def test_a_cancelled_jobs_checkpoint_is_deleted(setup, staged, tmp_path):
    store, artifacts, add = setup
    jid = add(5, steps=60)
    hub = ProgressHub()
    d = Dispatcher(store, _stages(staged, artifacts, tmp_path), QueueConfig(poll_seconds=0.05), progress=hub,
                   checkpoints=JobCheckpoints(artifacts, every_seconds=0))
    key = artifacts.root / denoise_checkpoint_key("t", jid)

    async def scenario():
        task = asyncio.create_task(d.run())
        async with asyncio.timeout(60):
            await _until_step(hub, jid, 3)
            while store.get(jid).checkpoint_step is None:
                await asyncio.sleep(0.01)
            assert key.exists()
            store.request_cancel(jid)
            await d.cancel(jid)
            # The status is recorded first, then the runner deletes the checkpoint (JobRunner.finished).
            while store.get(jid).status != JobStatus.CANCELLED or key.exists():
                await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    assert not key.exists() and store.get(jid).checkpoint_key is None
