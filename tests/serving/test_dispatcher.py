"""The dispatcher on its own, driving the real engines in this process (no Ray)."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from engines.params import GenerationParams, GenerationRequest, params_to_dict
from engines.watermark import WatermarkConfig
from serving.artifacts import LocalArtifactStore
from serving.config import ProvenanceConfig, QueueConfig
from serving.control_plane.dispatcher import Dispatcher
from serving.data_plane.local_stages import LocalStages
from serving.data_plane.rendering import Renderer
from serving.data_plane.stages import Artifact, StageUnavailable
from serving.jobs import JobStatus, NewJob, Stage
from serving.provenance.credentials import ContentCredentials


class InProcessStages(LocalStages):
    """The stages in this process (serving/data_plane/local_stages.py) over the session's tiny engines; records the
    prompts it encoded."""

    def __init__(self, staged, artifacts: LocalArtifactStore, tmp_path, enhancer=None) -> None:
        renderer = Renderer(staged.decoder, staged.media, artifacts,
                            ContentCredentials(ProvenanceConfig(dev_chain_dir=str(tmp_path / "creds"))),
                            WatermarkConfig())
        super().__init__(staged, renderer, enhancer=enhancer)
        self.encoded: list[str] = []

    def encode(self, job_id: str, params: GenerationParams) -> Any:
        self.encoded.append(params.prompt)
        return super().encode(job_id, params)


class FlakyStages(InProcessStages):
    """Fault injection: the first decode finds its replica gone (what a ray.kill causes)."""

    failures = 1

    async def decode(self, job_id, params, latents, artifact_key, claim, parent_key=None) -> Artifact:
        if self.failures:
            self.failures -= 1
            raise StageUnavailable("decoder: ActorDiedError (injected)")
        return await super().decode(job_id, params, latents, artifact_key, claim, parent_key)


async def _run_until(dispatcher: Dispatcher, store, ids, statuses=(JobStatus.COMPLETED,), timeout=60.0):
    task = asyncio.create_task(dispatcher.run())
    try:
        async with asyncio.timeout(timeout):
            while not all(store.get(i).status in statuses for i in ids):
                await asyncio.sleep(0.05)
    finally:
        task.cancel()


def test_jobs_complete_and_a_lost_replica_is_retried(setup, staged, tmp_path):
    store, artifacts, add = setup
    ids = [add(i) for i in range(3)]
    d = Dispatcher(store, FlakyStages(staged, artifacts, tmp_path), QueueConfig(max_attempts=3, poll_seconds=0.05))
    asyncio.run(_run_until(d, store, ids))
    for i in ids:
        job = store.get(i)
        assert job.status == JobStatus.COMPLETED and job.artifact.size_bytes > 0
    messages = [e.message for i in ids for e in store.events(i)]
    assert any("retrying after: decoder: ActorDiedError" in m for m in messages)


async def _until_step(hub, jid: str, step: int) -> int:
    """Wait until the job's pushed progress reaches `step`; the step it is at."""
    while (live := (await hub.latest([jid])).get(jid)) is None or live.stage != Stage.DENOISING or live.step < step:
        await asyncio.sleep(0.01)
    return live.step


def test_cancel_mid_denoise(setup, staged, tmp_path):
    from serving.control_plane.progress import ProgressHub

    store, artifacts, add = setup
    jid = add(0, steps=60)
    hub = ProgressHub()
    d = Dispatcher(store, InProcessStages(staged, artifacts, tmp_path), QueueConfig(poll_seconds=0.05), progress=hub)

    async def scenario():
        task = asyncio.create_task(d.run())
        async with asyncio.timeout(60):
            await _until_step(hub, jid, 2)
            store.request_cancel(jid)
            assert await d.cancel(jid)
            while store.get(jid).status != JobStatus.CANCELLED:
                await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    job = store.get(jid)
    assert job.error_code == "cancelled" and 2 <= job.step < 60 and job.artifact is None


def test_a_cancel_flagged_only_in_the_store_stops_the_job_at_the_next_heartbeat(setup, staged, tmp_path):
    """A cancel the dispatcher's hub never heard (another cluster's front door, during an upgrade)."""
    from serving.control_plane.progress import ProgressHub

    store, artifacts, add = setup
    jid = add(0, steps=100)
    hub = ProgressHub()
    d = Dispatcher(store, InProcessStages(staged, artifacts, tmp_path),
                   QueueConfig(poll_seconds=0.05, heartbeat_seconds=0.2), progress=hub)

    async def scenario():
        task = asyncio.create_task(d.run())
        async with asyncio.timeout(60):
            await _until_step(hub, jid, 2)
            store.request_cancel(jid)  # no d.cancel(): only the store knows
            while store.get(jid).status != JobStatus.CANCELLED:
                await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    job = store.get(jid)
    assert job.error_code == "cancelled" and job.step < 100 and job.artifact is None


def test_a_cancel_arriving_while_the_job_is_being_stopped_still_records_it(setup, staged, tmp_path):
    """Revocation and CancelVideo both flag the store and cancel the task; whichever lands while
    the dispatcher is already recording the stop must not leave the job in progress forever."""
    from serving.control_plane.progress import ProgressHub

    store, artifacts, add = setup
    jid = add(0, steps=60)
    hub = ProgressHub()
    d = Dispatcher(store, InProcessStages(staged, artifacts, tmp_path), QueueConfig(poll_seconds=0.05), progress=hub)

    async def scenario():
        task = asyncio.create_task(d.run())
        async with asyncio.timeout(60):
            await _until_step(hub, jid, 2)
            store.request_cancel(jid)
            while await d.cancel(jid):  # keep cancelling until the task is gone, as repeated requests do
                await asyncio.sleep(0)
            while store.get(jid).status != JobStatus.CANCELLED:
                await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    assert store.get(jid).error_code == "cancelled"


def test_a_job_left_by_a_dead_dispatcher_is_requeued_when_its_lease_expires_and_runs_once(setup, staged, tmp_path):
    store, artifacts, add = setup
    jid = add(0)
    store.claim_next("dead-dispatcher", 0.05)  # claimed, then its dispatcher died: nobody renews the lease
    d = Dispatcher(store, InProcessStages(staged, artifacts, tmp_path), QueueConfig(poll_seconds=0.05))
    asyncio.run(_run_until(d, store, [jid]))
    job = store.get(jid)
    assert job.status == JobStatus.COMPLETED and job.attempts == 2
    messages = [e.message for e in store.events(jid)]
    assert "requeued: the lease of dispatcher dead-dispatcher expired" in messages
    assert messages.count("completed") == 1


class CountingStore:
    """The job store, counting the calls a dispatcher makes."""

    def __init__(self, store) -> None:
        self.store, self.calls = store, collections.Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        def call(*args, **kwargs):
            self.calls[name] += 1
            return method(*args, **kwargs)
        return call


def test_an_idle_dispatcher_only_counts_the_queue_and_a_wake_claims_at_once(setup, staged, tmp_path):
    store, artifacts, add = setup
    counting = CountingStore(store)

    async def idle(seconds: float) -> None:  # rounds every 1.5 s, each one counted (counts: at most once a second)
        d = Dispatcher(counting, InProcessStages(staged, artifacts, tmp_path), QueueConfig(poll_seconds=1.5))
        task = asyncio.create_task(d.run())
        await asyncio.sleep(seconds)
        task.cancel()

    asyncio.run(idle(3.5))
    # Nothing queued, nothing in progress: no claim, no reap, no lease renewal, only the counts (and the hourly prune).
    assert set(counting.calls) == {"count_by_status", "prune_events"} and counting.calls["count_by_status"] >= 2
    # A minute's poll: the job is found by the wake alone.
    d = Dispatcher(store, InProcessStages(staged, artifacts, tmp_path), QueueConfig(poll_seconds=60))

    async def woken() -> str:
        task = asyncio.create_task(d.run())
        await asyncio.sleep(0.5)  # its first round found nothing to do
        jid = add(0)
        d.wake()
        try:
            async with asyncio.timeout(50):
                while store.get(jid).status != JobStatus.COMPLETED:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
        return jid

    assert store.get(asyncio.run(woken())).attempts == 1


# -- prompt enhancement ----------------------------------------------------------------------
class ScriptedEnhancer:
    """Returns fixed rewrites (a stand-in for an LLM's choice of words; the real enhancer has its own tests)."""

    def __init__(self, rewrite: str) -> None:
        self.rewrite, self.calls = rewrite, 0

    def enhance(self, prompts, seeds):
        self.calls += 1
        return [self.rewrite for _ in prompts]


def _add_enhanced(store, tiny_config, prompt="a cat"):
    from engines.config import EnhancerConfig

    cfg = tiny_config.replace(enhancer=EnhancerConfig(enabled=True))
    p = GenerationRequest(prompt=prompt, seed=1, steps=2, enhance_prompt=True).validated(cfg)
    job, _ = store.create(NewJob(id="video_enh", tenant="t", model="m", priority=5, params=params_to_dict(p),
                                 request_hash="e"), max_queued=10)
    return job.id


def test_the_enhanced_prompt_is_stored_shown_and_encoded(setup, staged, tiny_config, tmp_path):
    from engines.config import EnhancerConfig
    from engines.prompt_enhancer import TransformersEnhancer

    store, artifacts, _ = setup
    jid = _add_enhanced(store, tiny_config)
    enhancer = TransformersEnhancer(tiny_config.replace(enhancer=EnhancerConfig(enabled=True, max_new_tokens=24)),
                                    staged.components)
    stages = InProcessStages(staged, artifacts, tmp_path, enhancer)
    asyncio.run(_run_until(Dispatcher(store, stages, QueueConfig(poll_seconds=0.05)), store, [jid]))
    job = store.get(jid)
    assert job.status == JobStatus.COMPLETED
    assert job.enhanced_prompt and job.enhanced_prompt != "a cat"
    assert stages.encoded == [job.enhanced_prompt]  # the encoder saw the rewrite, not the request
    assert job.params["prompt"] == "a cat"  # what the user wrote is kept as written
    assert [e.message for e in store.events(jid)][2:4] == ["enhancing prompt", "prompt enhanced"]


def test_a_rewrite_moderation_rejects_falls_back_to_the_prompt(setup, staged, tiny_config, tmp_path):
    from serving.moderation import RuleModerator

    store, artifacts, _ = setup
    jid = _add_enhanced(store, tiny_config)
    stages = InProcessStages(staged, artifacts, tmp_path, ScriptedEnhancer("a cat, then gore everywhere"))
    d = Dispatcher(store, stages, QueueConfig(poll_seconds=0.05), moderator=RuleModerator.from_file())
    asyncio.run(_run_until(d, store, [jid]))
    job = store.get(jid)
    assert job.status == JobStatus.COMPLETED and job.enhanced_prompt == "a cat"
    assert stages.encoded == ["a cat"]
    assert any("rejected by moderation (category graphic_violence)" in e.message for e in store.events(jid))


def test_a_resumed_job_reuses_its_stored_rewrite(setup, staged, tiny_config, tmp_path):
    store, artifacts, _ = setup
    jid = _add_enhanced(store, tiny_config)
    old = store.claim_next("dead-dispatcher", 0.05).lease
    store.set_enhanced_prompt(old, "a ginger cat on a windowsill", "prompt enhanced")  # then the dispatcher died
    enhancer = ScriptedEnhancer("a different rewrite")
    stages = InProcessStages(staged, artifacts, tmp_path, enhancer)
    asyncio.run(_run_until(Dispatcher(store, stages, QueueConfig(poll_seconds=0.05)), store, [jid]))
    assert store.get(jid).status == JobStatus.COMPLETED
    assert enhancer.calls == 0 and stages.encoded == ["a ginger cat on a windowsill"]


def test_a_retry_within_the_claim_encodes_the_stored_rewrite_without_asking_again(setup, staged, tiny_config,
                                                                                   tmp_path):
    store, artifacts, _ = setup
    jid = _add_enhanced(store, tiny_config)
    enhancer = ScriptedEnhancer("a ginger cat on a windowsill")
    stages = FlakyStages(staged, artifacts, tmp_path, enhancer)  # the first decode finds its replica gone
    asyncio.run(_run_until(Dispatcher(store, stages, QueueConfig(poll_seconds=0.05)), store, [jid]))
    job = store.get(jid)
    assert job.status == JobStatus.COMPLETED and job.attempts == 1  # retried within its one claim
    assert enhancer.calls == 1, "the retry asked the enhancer again instead of using the stored rewrite"
    assert stages.encoded == ["a ginger cat on a windowsill"] * 2


# -- leases, hand back, pushed progress ---------------------------------------------------------
class CountingStages(InProcessStages):
    """Counts the MP4s rendered: a job run twice would render twice."""

    renders = 0

    async def decode(self, job_id, params, latents, artifact_key, claim, parent_key=None) -> Artifact:
        type(self).renders += 1
        return await super().decode(job_id, params, latents, artifact_key, claim, parent_key)


def test_two_dispatchers_racing_for_one_job_run_it_once(setup, staged, tmp_path):
    store, artifacts, add = setup
    jid = add(0, steps=4)
    CountingStages.renders = 0
    a, b = (Dispatcher(store, CountingStages(staged, artifacts, tmp_path), QueueConfig(poll_seconds=0.01),
                       owner=name) for name in ("a", "b"))

    async def scenario():
        tasks = [asyncio.create_task(d.run()) for d in (a, b)]
        try:
            async with asyncio.timeout(60):
                while store.get(jid).status != JobStatus.COMPLETED:
                    await asyncio.sleep(0.02)
        finally:
            for t in tasks:
                t.cancel()

    asyncio.run(scenario())
    assert CountingStages.renders == 1 and store.get(jid).attempts == 1
    assert [e.message for e in store.events(jid)].count("completed") == 1


def test_a_stopping_dispatcher_hands_its_jobs_back_without_using_an_attempt(setup, staged, tmp_path):
    store, artifacts, add = setup
    jid = add(0, steps=60)
    d = Dispatcher(store, InProcessStages(staged, artifacts, tmp_path), QueueConfig(poll_seconds=0.05), owner="old")

    async def scenario():
        task = asyncio.create_task(d.run())
        async with asyncio.timeout(60):
            while store.get(jid).step < 2:
                await asyncio.sleep(0.01)
        await d.stop()
        task.cancel()

    asyncio.run(scenario())
    job = store.get(jid)
    assert job.status == JobStatus.QUEUED and job.attempts == 0 and job.lease_owner is None
    assert "handed back: dispatcher old is stopping" in [e.message for e in store.events(jid)]
    asyncio.run(_run_until(Dispatcher(store, InProcessStages(staged, artifacts, tmp_path),
                                      QueueConfig(poll_seconds=0.05)), store, [jid]))
    assert store.get(jid).attempts == 1


def test_every_step_is_pushed_while_the_store_gets_only_the_state_changes(setup, staged, tmp_path):
    from serving.control_plane.progress import ProgressHub

    store, artifacts, add = setup
    jid = add(0, steps=40)
    hub = ProgressHub(backlog=1000)
    d = Dispatcher(store, InProcessStages(staged, artifacts, tmp_path), QueueConfig(poll_seconds=0.05), progress=hub)

    async def scenario():
        pushed = []

        async def watch():
            async for p in await hub.subscribe(jid):
                pushed.append(p)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        await _run_until(d, store, [jid])
        await asyncio.wait_for(watcher, 10)
        return pushed

    pushed = asyncio.run(scenario())
    steps = [p.step for p in pushed if p.stage == Stage.DENOISING]
    assert steps == list(range(1, 41)) and pushed[-1].status == JobStatus.COMPLETED
    stored = [(e.stage, e.step) for e in store.events(jid) if e.status == JobStatus.IN_PROGRESS]
    # started, encoding, denoising reached at step 1, its last step, decoding: however many steps it takes
    assert stored == [(Stage.ENCODING, 0), (Stage.ENCODING, 0), (Stage.DENOISING, 1), (Stage.DENOISING, 40),
                      (Stage.DECODING, 40)], stored
    assert asyncio.run(hub.latest([jid])) == {}  # the hub forgets a job once it ends


class SlowUpsampling(InProcessStages):
    """The upsampler takes a while (as at 1080p), so a cancel lands in that phase."""

    def upsample(self, job_id: str, latents: Any) -> Any:
        async def slow():
            await asyncio.sleep(1.0)
            return await super(SlowUpsampling, self).upsample(job_id, latents)
        return asyncio.ensure_future(slow())


def _two_stage_job(store, tiny_config, steps: int) -> str:
    p = GenerationRequest(prompt="two stages", seed=1, steps=steps, width=128, height=128,
                         two_stage=True).validated(tiny_config)
    job, _ = store.create(NewJob(id="video_two", tenant="t", model="m", priority=5, params=params_to_dict(p),
                                 request_hash="two"), max_queued=100)
    return job.id


def _watching(hub, jid, until):
    pushed: list = []

    async def watch():
        async for p in await hub.subscribe(jid):
            pushed.append(p)
            if until(p):
                return

    return pushed, asyncio.create_task(watch())


def test_a_two_stage_job_shows_both_stages_and_the_upsampling(setup, staged, tiny_config, tmp_path):
    import av

    from serving.control_plane.progress import ProgressHub

    store, artifacts, _ = setup
    jid = _two_stage_job(store, tiny_config, steps=4)
    hub = ProgressHub(backlog=1000)
    d = Dispatcher(store, InProcessStages(staged, artifacts, tmp_path), QueueConfig(poll_seconds=0.05), progress=hub)

    async def scenario():
        pushed, watcher = _watching(hub, jid, lambda p: p.status.terminal)
        await asyncio.sleep(0)
        await _run_until(d, store, [jid])
        await asyncio.wait_for(watcher, 10)
        return pushed

    pushed = asyncio.run(scenario())
    denoising = [(p.step, p.total_steps, p.message) for p in pushed if p.stage == Stage.DENOISING]
    assert denoising == ([(i, 7, f"stage 1 of 2: step {i}/4") for i in range(1, 5)] + [(4, 7, "upsampling")]
                         + [(4 + j, 7, f"stage 2 of 2: step {j}/3") for j in range(1, 4)])
    shares = [p.progress for p in pushed if p.stage == Stage.DENOISING]
    assert shares == sorted(shares) and shares[3] < 0.5  # a stage-2 step weighs its 4x tokens
    job = store.get(jid)
    assert job.status == JobStatus.COMPLETED and (job.step, job.total_steps) == (7, 7)
    with av.open(str(artifacts.local_path(job.artifact.key))) as mp4:
        stream = mp4.streams.video[0]
        assert (stream.width, stream.height) == (128, 128) and mp4.streams.audio


def test_a_cancel_while_upsampling_stops_the_job(setup, staged, tiny_config, tmp_path):
    from serving.control_plane.progress import ProgressHub

    store, artifacts, _ = setup
    jid = _two_stage_job(store, tiny_config, steps=2)
    hub = ProgressHub(backlog=1000)
    d = Dispatcher(store, SlowUpsampling(staged, artifacts, tmp_path), QueueConfig(poll_seconds=0.05), progress=hub)

    async def scenario():
        pushed, watcher = _watching(hub, jid, lambda p: p.message == "upsampling")
        await asyncio.sleep(0)
        task = asyncio.create_task(d.run())
        async with asyncio.timeout(60):
            await watcher
            store.request_cancel(jid)
            assert await d.cancel(jid)
            while store.get(jid).status != JobStatus.CANCELLED:
                await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    job = store.get(jid)
    assert job.error_code == "cancelled" and job.artifact is None and job.step == 2


def test_a_cancel_that_meets_a_wake_still_stops_the_dispatcher(setup, staged, tmp_path):
    """Python 3.11's asyncio.wait_for returns the inner result when a cancel arrives as it completes: the dispatch
    loop, waiting for a wake with it, went on for ever after a cancel that met a wake (a job ending just as the
    dispatcher was stopped; the control-plane benchmark's stop hung on it)."""
    store, artifacts, _ = setup
    dispatcher = Dispatcher(store, InProcessStages(staged, artifacts, tmp_path), QueueConfig(poll_seconds=30))

    async def main() -> None:
        task = asyncio.create_task(dispatcher.run())
        await asyncio.sleep(0.5)  # its first round done: waiting for a wake
        dispatcher.wake()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert task in done and task.cancelled()

    asyncio.run(main())
