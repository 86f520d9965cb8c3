"""One subscription per front door: each front door's feed (ServeProgressFeed) holds one relay stream from the
cluster's ProgressHub and fans the events out to its own watchers. No Ray: the Serve handle is a stand-in that
calls an in-memory hub (with a network's delay), and can break its streams as a replaced hub replica would."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from serving.control_plane.progress import QUEUE_TOPIC, Progress, ProgressHub
from serving.jobs import JobStatus, Stage
from serving.on_ray.progress import ServeProgressFeed

LATENCY = 0.005  # seconds each way, as a handle call's


class _Stream:
    """A streaming call's response: the hub's generator pumped into a queue; `cancel()` ends it at the hub, `cut()`
    breaks it at the caller's end (the hub replica died)."""

    def __init__(self, gen: AsyncIterator[Any], delay: float) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pump = asyncio.ensure_future(self._run(gen, delay))

    async def _run(self, gen: Any, delay: float) -> None:
        try:
            async for item in gen:
                await asyncio.sleep(delay)
                await self._queue.put(item)
        finally:
            await gen.aclose()

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Any:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self._pump.cancel()

    def cut(self) -> None:
        self._pump.cancel()
        self._queue.put_nowait(ConnectionError("the hub replica died"))


class _Method:
    def __init__(self, handle: Handle, name: str) -> None:
        self.handle, self.name = handle, name

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        self.handle.calls[self.name] += 1
        hub = self.handle.hub
        if self.name == "relay":
            stream = _Stream(hub.relay(*args), self.handle.stream_delay)
            self.handle.streams.append(stream)
            return stream

        async def call() -> Any:
            await asyncio.sleep(LATENCY)
            out = getattr(hub, self.name)(*args, **kwargs)
            if asyncio.iscoroutine(out):
                out = await out
            await asyncio.sleep(LATENCY)
            return out

        return asyncio.ensure_future(call())


class Handle:
    """The ProgressHub deployment's handle, over an in-memory hub."""

    def __init__(self, hub: ProgressHub, stream_delay: float = 0.0) -> None:
        from collections import Counter

        self.hub, self.stream_delay = hub, stream_delay
        self.calls: Counter[str] = Counter()
        self.streams: list[_Stream] = []

    def options(self, **_: Any) -> Handle:
        return self

    def __getattr__(self, name: str) -> _Method:
        return _Method(self, name)


def step(video_id: str, n: int, total: int = 10) -> Progress:
    return Progress(video_id=video_id, status=JobStatus.IN_PROGRESS, stage=Stage.DENOISING, at=time.time(), step=n,
                    total_steps=total)


def end(video_id: str) -> Progress:
    return Progress(video_id=video_id, status=JobStatus.COMPLETED, stage=Stage.DONE, at=time.time(), step=10,
                    total_steps=10)


async def _collect(sub: Any, until: Callable[[Any], bool] = lambda p: p.terminal) -> list:
    seen = []
    try:
        async for p in sub:
            seen.append(p)
            if until(p):
                break
    finally:
        await sub.aclose()
    return seen


async def _until(check: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.01)


def test_many_watchers_on_two_front_doors_make_one_relay_each_and_see_every_step_and_the_end():
    async def main() -> None:
        hub = ProgressHub()
        handle = Handle(hub)
        doors = [ServeProgressFeed(handle), ServeProgressFeed(handle)]
        videos = ["video_a", "video_b", "video_c"]
        subs = [(v, await door.subscribe(v)) for door in doors for v in videos for _ in range(20)]
        assert handle.calls["relay"] == 2 and len(hub.relays) == 2
        assert {s: vs for s, (vs, _) in hub.relays.items()} == {d.subscriber: frozenset(videos) for d in doors}
        assert handle.calls["interest"] <= 2 * len(videos), handle.calls  # not one per watcher
        watching = [asyncio.ensure_future(_collect(s)) for _, s in subs]
        for n in range(1, 11):
            for v in videos:
                hub.publish(step(v, n))
            await asyncio.sleep(0)
        for v in videos:
            hub.publish(end(v))
        async with asyncio.timeout(5):
            seen = await asyncio.gather(*watching)
        for (v, _), got in zip(subs, seen, strict=True):
            assert [p.video_id for p in got] == [v] * 11
            assert [p.step for p in got[:-1]] == list(range(1, 11)) and got[-1].status == JobStatus.COMPLETED
        await _until(lambda: all(vs == frozenset() for vs, _ in hub.relays.values()))  # all left: no interest
        assert handle.calls["relay"] == 2  # still one each
        for door in doors:
            await door.close()
        await _until(lambda: not hub.relays)  # a relay that ends takes its interest with it

    asyncio.run(main())


def test_a_watcher_is_registered_at_the_hub_when_subscribe_returns():
    """Registered before the watcher reads its snapshot in the store: an event published right after is not lost."""

    async def main() -> None:
        hub = ProgressHub()
        door = ServeProgressFeed(Handle(hub))
        sub = await door.subscribe("video_a")
        assert hub.relays[door.subscriber][0] == {"video_a"}
        second = await door.subscribe("video_a")  # already held: no call to wait for
        hub.publish(step("video_a", 1))
        hub.publish(end("video_a"))
        async with asyncio.timeout(5):
            assert [p.step for p in await _collect(sub)] == [1, 10]
            assert [p.step for p in await _collect(second)] == [1, 10]
        await door.close()

    asyncio.run(main())


def test_the_last_watcher_leaving_removes_the_interest_at_the_hub():
    async def main() -> None:
        hub = ProgressHub()
        door = ServeProgressFeed(Handle(hub))
        a1, a2, b = await door.subscribe("video_a"), await door.subscribe("video_a"), await door.subscribe("video_b")
        q = await door.nudges(QUEUE_TOPIC)
        assert hub.relays[door.subscriber] == ({"video_a", "video_b"}, {QUEUE_TOPIC})
        await a1.aclose()
        await asyncio.sleep(0.1)
        assert hub.relays[door.subscriber] == ({"video_a", "video_b"}, {QUEUE_TOPIC})  # a2 still watches
        await a2.aclose()
        await q.aclose()
        await _until(lambda: hub.relays[door.subscriber] == ({"video_b"}, set()))
        hub.publish(step("video_a", 1))  # nobody here watches it: not relayed
        hub.publish(step("video_b", 1))
        async with asyncio.timeout(5):
            assert (await anext(b)).video_id == "video_b"
        await b.aclose()
        await _until(lambda: hub.relays[door.subscriber] == (set(), set()))
        await door.close()

    asyncio.run(main())


def test_a_slow_relay_drops_steps_never_a_terminal_event():
    async def main() -> None:
        hub = ProgressHub(relay_backlog=8)
        hub.interest("door", watch=["video_a", "video_b"], topics=[QUEUE_TOPIC])
        relay = hub.relay("door")
        for n in range(1, 101):  # the front door reads nothing meanwhile
            hub.publish(step("video_a", n, total=100))
            if n == 50:
                hub.publish(end("video_b"))
                hub.nudge(QUEUE_TOPIC)
        hub.publish(end("video_a"))
        batch = await anext(relay)
        await relay.aclose()
        events = [p for p in batch if isinstance(p, Progress)]
        assert len(events) <= 9
        assert [p.video_id for p in events if p.terminal] == ["video_b", "video_a"]
        assert events[-1].terminal and events[-2].step == 100  # the newest steps stay
        assert QUEUE_TOPIC in batch
        assert hub.relays == {}

    asyncio.run(main())


def test_a_slow_front_door_still_sees_every_end():
    async def main() -> None:
        hub = ProgressHub(relay_backlog=4)
        door = ServeProgressFeed(Handle(hub, stream_delay=0.05))  # each batch takes a while to arrive
        subs = {v: await door.subscribe(v) for v in ("video_a", "video_b")}
        watching = {v: asyncio.ensure_future(_collect(s)) for v, s in subs.items()}
        for n in range(1, 201):
            for v in subs:
                hub.publish(step(v, n, total=200))
            if n % 20 == 0:
                await asyncio.sleep(0)
        for v in subs:
            hub.publish(end(v))
        async with asyncio.timeout(5):
            for v, task in watching.items():
                got = await task
                assert got[-1].terminal and got[-1].video_id == v
                steps = [p.step for p in got[:-1]]
                assert steps == sorted(steps) and len(steps) < 200  # some were dropped, in order
        await door.close()

    asyncio.run(main())


def test_a_broken_relay_reconnects_declares_its_interest_again_and_events_arrive():
    async def main() -> None:
        first = ProgressHub()
        handle = Handle(first)
        door = ServeProgressFeed(handle, reconnect_seconds=0.05)
        sub, moves = await door.subscribe("video_a"), await door.nudges(QUEUE_TOPIC)
        first.publish(step("video_a", 1))
        async with asyncio.timeout(5):
            assert (await anext(sub)).step == 1
        watching = asyncio.ensure_future(_collect(sub))
        old = door.subscriber
        replacement = ProgressHub()  # the hub replica is replaced: its streams break, its state is gone
        handle.hub = replacement
        handle.streams[-1].cut()
        await _until(lambda: door.subscriber != old and replacement.relays.get(door.subscriber)
                     == ({"video_a"}, {QUEUE_TOPIC}))
        assert handle.calls["relay"] == 2
        replacement.publish(step("video_a", 2))
        replacement.nudge(QUEUE_TOPIC)
        async with asyncio.timeout(5):
            assert await anext(moves) is None
        replacement.publish(end("video_a"))
        async with asyncio.timeout(5):
            got = await watching
        assert [p.step for p in got] == [2, 10] and got[-1].terminal  # the watcher stayed subscribed
        await moves.aclose()
        await door.close()

    asyncio.run(main())


def test_nudges_reach_queued_watchers_through_the_same_relay():
    async def main() -> None:
        hub = ProgressHub()
        handle = Handle(hub)
        door = ServeProgressFeed(handle)
        pushed = await door.subscribe("video_a")
        moves = [await door.nudges(QUEUE_TOPIC) for _ in range(5)]
        owner = await door.nudges("owner:ann")
        door.nudge(QUEUE_TOPIC)  # as a front door's create does: through the hub, back over the relay
        async with asyncio.timeout(5):
            assert await asyncio.gather(*(anext(m) for m in moves)) == [None] * 5
        woken = asyncio.ensure_future(anext(owner))
        await asyncio.sleep(0.1)
        assert not woken.done()  # another topic
        hub.nudge("owner:ann")
        async with asyncio.timeout(5):
            await woken
        assert handle.calls["relay"] == 1
        for s in (pushed, owner, *moves):
            await s.aclose()
        await door.close()

    asyncio.run(main())


def test_an_interest_whose_relay_never_came_is_forgotten_not_one_that_streams(monkeypatch):
    """A front door that died between declaring its interest and opening its relay leaves nothing behind for long."""
    from serving.control_plane import progress

    async def main() -> None:
        hub = ProgressHub()
        hub.interest("gone", watch=["video_a"])
        hub.interest("streaming", watch=["video_a"])
        relay = hub.relay("streaming")
        reading = asyncio.ensure_future(anext(relay))
        await asyncio.sleep(0)
        monkeypatch.setattr(progress, "ORPHAN_SECONDS", 0.0)
        hub.interest("new", watch=["video_b"])
        assert set(hub.relays) == {"streaming", "new"}
        hub.publish(step("video_a", 1))
        assert [p.step for p in await reading] == [1]
        await relay.aclose()
        assert set(hub.relays) == {"new"}

    asyncio.run(main())


def test_watch_video_through_a_front_doors_feed_sees_every_pushed_step_and_the_stored_end(tmp_path, tiny_config):
    """WatchVideo's generator (watch.py) over the relayed feed: the snapshot, each step pushed at the cluster's hub,
    then the end as the store has it."""
    from serving.accounts.models import Principal, Tenant
    from serving.jobs.sql_store import SqlJobStore
    from tests.serving.video_setups import job_database, queue_jobs, video_service

    db = job_database(tmp_path)
    store = SqlJobStore(db)
    queue_jobs(store, tiny_config, ["video_1"], steps=5)
    lease = store.claim_next("d1", 30.0).lease
    store.record_progress(lease, stage=Stage.DENOISING, step=1, total_steps=5, progress=0.2)

    async def main() -> list:
        hub = ProgressHub()
        door = ServeProgressFeed(Handle(hub))
        videos = video_service(db, store, tmp_path, progress=door)
        seen: list = []

        async def watch() -> None:
            async for p in videos.watch(Principal(Tenant("t", "t")), "video_1", poll_seconds=5.0):
                seen.append(p)

        watchers = [asyncio.create_task(watch()) for _ in range(3)]
        await _until(lambda: len(seen) == 3)  # the snapshots: the watchers are registered
        assert hub.relays[door.subscriber][0] == {"video_1"}
        for n in range(2, 6):
            hub.publish(step("video_1", n, total=5))
            await asyncio.sleep(0.01)
        done = store.finish(lease, JobStatus.FAILED, error_code="internal", error_message="the decoder went away")
        hub.publish(Progress.of_job(done, None, "failed"))
        async with asyncio.timeout(5):
            await asyncio.gather(*watchers)
        await _until(lambda: hub.relays[door.subscriber] == (set(), set()))
        await door.close()
        return seen

    seen = asyncio.run(main())
    assert sorted(p.step for p in seen if p.message != "snapshot" and not p.terminal) == sorted([2, 3, 4, 5] * 3)
    ends = [p for p in seen if p.terminal]
    assert len(ends) == 3 and all(p.error_code == "internal" for p in ends)


def test_a_hub_that_does_not_answer_delays_a_watcher_by_at_most_the_registration_bound(monkeypatch):
    """The hub is away (its replica being replaced): subscribe returns after REGISTER_SECONDS and the watcher reads
    the store; once the hub answers, the interest it missed is declared and events arrive."""
    from serving.on_ray import progress

    monkeypatch.setattr(progress, "REGISTER_SECONDS", 0.2)
    monkeypatch.setattr(progress, "INTEREST_SECONDS", 0.3)

    async def main() -> None:
        hub = ProgressHub()
        handle = Handle(hub)
        answering = asyncio.Event()
        interest = hub.interest

        async def slow_interest(*args: Any, **kwargs: Any) -> None:
            await answering.wait()
            interest(*args, **kwargs)

        hub.interest = slow_interest  # type: ignore[method-assign]
        door = ServeProgressFeed(handle, reconnect_seconds=0.05)
        started = time.monotonic()
        sub = await door.subscribe("video_a")
        assert 0.2 <= time.monotonic() - started < 1.0
        answering.set()
        await _until(lambda: hub.relays.get(door.subscriber, (set(), set()))[0] == {"video_a"})
        hub.publish(end("video_a"))
        async with asyncio.timeout(5):
            assert [p.terminal for p in await _collect(sub)] == [True]
        await door.close()

    asyncio.run(main())


def test_a_watcher_cancelled_while_registering_leaves_nothing_behind():
    async def main() -> None:
        hub = ProgressHub()
        door = ServeProgressFeed(Handle(hub))
        joining = asyncio.ensure_future(door.subscribe("video_a"))
        await asyncio.sleep(0)
        joining.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await joining
        assert door.local.watchers == 0
        await _until(lambda: hub.relays.get(door.subscriber) == (set(), set()))
        await door.close()

    asyncio.run(main())
