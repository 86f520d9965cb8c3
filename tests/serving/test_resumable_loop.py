"""Resumable denoising in the denoise loop, in this process on the tiny engine with a real artifact directory:
checkpoints as the request steps and when it ends, a resume that finishes bit-identical to an uninterrupted
run, a corrupt checkpoint that falls back to step 0, and a drain that hands its requests back checkpointed."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from engines.denoiser import DenoiseRequest
from engines.params import GenerationRequest
from engines.stage_io import PromptPair
from serving.artifacts import LocalArtifactStore
from serving.data_plane.denoise_loop import DenoiseLoop
from serving.data_plane.scheduler import StepScheduler
from serving.data_plane.stages import Checkpointed, Checkpointing, Denoised, DenoiseEvent, HandedBack, Resumed

KEY = "tenant-a/video_1.denoise.ckpt"


def _request(staged, config, rid: str = "video_1@1", steps: int = 10) -> DenoiseRequest:
    p = GenerationRequest(prompt="a lighthouse at dusk", seed=3, steps=steps).validated(config)
    [emb] = staged.text_encoder.encode([PromptPair(p.prompt, p.negative_prompt)])
    return DenoiseRequest(rid, p, emb)


def _loop(staged, store) -> DenoiseLoop:
    return DenoiseLoop(staged.denoiser, StepScheduler(4, max_running=8), checkpoints=store)


async def _items(loop, request, checkpointing, stop_after: int | None = None) -> list:
    items = []
    async for item in loop.denoise(request, 5, checkpointing):
        items.append(item)
        if stop_after is not None and isinstance(item, DenoiseEvent) and item.step == stop_after:
            break  # the caller goes away (its replica or node is lost): the checkpoints so far stay
    return items


def test_a_resumed_request_starts_at_its_checkpoint_and_ends_bit_identical(staged, tiny_config, tmp_path):
    store = LocalArtifactStore(tmp_path)
    request = _request(staged, tiny_config)
    whole = asyncio.run(_items(_loop(staged, LocalArtifactStore(tmp_path / "other")), request,
                               Checkpointing("x/y.ckpt", every_seconds=3600)))
    # Every step checkpointed; the first attempt is lost after step 7.
    first = asyncio.run(_items(_loop(staged, store), request, Checkpointing(KEY, every_seconds=0), stop_after=7))
    written = [i.step for i in first if isinstance(i, Checkpointed)]
    assert written and written[-1] <= 7 and store.local_path(KEY).is_file()
    retry = _request(staged, tiny_config, rid="video_1@2")  # the next attempt, on another loop
    again = asyncio.run(_items(_loop(staged, store), retry, Checkpointing(KEY, every_seconds=0, resume=True)))
    assert again[0] == Resumed(step=written[-1], total_steps=10)
    assert [i.step for i in again if isinstance(i, DenoiseEvent)] == list(range(written[-1] + 1, 11))
    assert isinstance(again[-1], Denoised) and again[-2] == Checkpointed(10)  # always written when it ends
    assert whole[-2] == Checkpointed(10) and [type(i) for i in whole].count(Checkpointed) == 1  # 3600 s: the end
    np.testing.assert_array_equal(again[-1].latents.video, whole[-1].latents.video)
    np.testing.assert_array_equal(again[-1].latents.audio, whole[-1].latents.audio)


def test_a_corrupt_or_missing_checkpoint_starts_the_request_over(staged, tiny_config, tmp_path, caplog):
    store = LocalArtifactStore(tmp_path)
    request = _request(staged, tiny_config, steps=4)
    whole = asyncio.run(_items(_loop(staged, store), request, None))
    store.put_bytes(KEY, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with caplog.at_level(logging.WARNING, logger="serving.data_plane.denoise_loop"):
        corrupt = asyncio.run(_items(_loop(staged, store), request, Checkpointing(KEY, 0, resume=True)))
        missing = asyncio.run(_items(_loop(staged, store), request, Checkpointing("none/such.ckpt", 0, resume=True)))
    for items in (corrupt, missing):
        assert not any(isinstance(i, Resumed) for i in items)
        assert [i.step for i in items if isinstance(i, DenoiseEvent)] == [1, 2, 3, 4]
        np.testing.assert_array_equal(items[-1].latents.video, whole[-1].latents.video)
    assert sum("not used" in r.getMessage() and "starting at step 0" in r.getMessage() for r in caplog.records) == 2


def test_a_drain_checkpoints_what_it_holds_and_hands_it_back(staged, tiny_config, tmp_path):
    store = LocalArtifactStore(tmp_path)
    request = _request(staged, tiny_config)

    async def main():
        loop = _loop(staged, store)
        items, drains = [], []
        async for item in loop.denoise(request, 5, Checkpointing(KEY, every_seconds=3600)):
            items.append(item)
            if isinstance(item, DenoiseEvent) and item.step == 4:  # the replica is told to stop
                drains.append(asyncio.get_running_loop().create_task(loop.drain()))
        return items, await drains[0]

    items, handed = asyncio.run(main())
    assert handed == 1
    assert isinstance(items[-1], HandedBack) and items[-2] == Checkpointed(items[-1].step)
    assert 4 <= items[-1].step < 10
    retry = asyncio.run(_items(_loop(staged, store), _request(staged, tiny_config, rid="video_1@2"),
                               Checkpointing(KEY, 3600, resume=True)))
    assert retry[0] == Resumed(step=items[-1].step, total_steps=10) and isinstance(retry[-1], Denoised)


def test_a_closed_stream_has_its_checkpoint_written_and_none_after(staged, tiny_config, tmp_path):
    """A caller that closes the stream (a job that ended, a cancel) may then delete the checkpoint: the write in
    flight has landed by then, and the loop writes none for that request afterwards."""

    class SlowStore(LocalArtifactStore):
        puts: list[float] = []

        def put_bytes(self, key, data, *args, **kw):
            import time

            time.sleep(0.3)  # a slow object store: the write is still in flight when the stream is closed
            self.puts.append(time.monotonic())
            return super().put_bytes(key, data, *args, **kw)

    store = SlowStore(tmp_path)

    async def scenario() -> tuple[int, bool]:
        loop = _loop(staged, store)
        stream = loop.denoise(_request(staged, tiny_config, steps=20), 5, Checkpointing(KEY, every_seconds=0))
        async for item in stream:
            if isinstance(item, DenoiseEvent) and item.step == 2:
                break
        await stream.aclose()
        landed, exists = len(store.puts), (tmp_path / KEY).is_file()
        store.delete(KEY)  # what the job runner does once a job has ended
        await asyncio.sleep(1.0)
        return landed, exists

    landed, existed = asyncio.run(scenario())
    assert landed >= 1 and existed  # the write in flight at the close landed before aclose returned
    assert len(store.puts) == landed and not (tmp_path / KEY).exists()  # and nothing was written after
