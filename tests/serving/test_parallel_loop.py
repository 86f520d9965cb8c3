"""A Denoiser replica's loop over 2 ranks (what serving/deployments/denoiser.py builds for model.parallel),
without Ray: `open_denoise_loop` with a `lead` whose follower is a real local process over gloo.

Its latents equal the 1-rank loop's within 1e-4 for requests batched together, and a follower that
dies fails the requests of the next step with ParallelError (which the dispatcher retries,
serving/on_ray/stages.py) instead of hanging.
"""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from engines.denoiser import DenoiseRequest
from engines.errors import ParallelError
from engines.parallel.world import LocalRanks
from engines.params import GenerationRequest
from engines.stage_io import PromptPair
from engines.text_encoder import TextEncoder
from serving.config import load_config
from serving.metrics import NoMetrics
from serving.services import open_denoise_loop
from tests.tools import migrated

TOL = 1e-4


async def _denoise_together(loop, requests):
    async def one(request):
        out = None
        async for item in loop.denoise(request, 5):
            out = item
        return out.latents  # the last item: Denoised

    return await asyncio.gather(*[one(r) for r in requests])


def test_a_two_rank_loop_gives_the_latents_of_one_rank_and_fails_cleanly(tmp_path):
    base = {"storage": {"database_url": migrated(f"sqlite:///{tmp_path / 'jobs.db'}"),
                        "artifacts_dir": str(tmp_path)}}
    one, two = load_config(base), load_config({**base, "model": {"parallel": {"cfg": 2}}})
    ranks = LocalRanks(two.model)  # the follower loads while the rest is built
    try:
        params = [GenerationRequest(prompt=p, width=64, height=64, seconds=1.0, steps=3, seed=s, guidance_scale=3.0)
                  .validated(one.model) for p, s in (("a kite over dunes", 1), ("rain on a tin roof", 2))]
        embeddings = TextEncoder(one.model).encode([PromptPair(p.prompt, "") for p in params])

        def requests(tag):
            pairs = enumerate(zip(params, embeddings, strict=True))
            return [DenoiseRequest(f"job_{tag}{i}:1", p, e, None) for i, (p, e) in pairs]

        spread = open_denoise_loop(two, NoMetrics(), lead=ranks.lead)
        expected = asyncio.run(_denoise_together(open_denoise_loop(one, NoMetrics()), requests("a")))

        async def spread_then_kill():  # one event loop, as a replica has
            got = await _denoise_together(spread, requests("b"))
            os.kill(ranks.processes[0].pid, signal.SIGKILL)
            ranks.processes[0].join(timeout=10)
            with pytest.raises(ParallelError, match="a DiT step failed"):
                await _denoise_together(spread, requests("c")[:1])
            spread.check()  # the loop itself keeps serving: only that step's requests failed
            return got

        for a, b in zip(expected, asyncio.run(spread_then_kill()), strict=True):
            assert np.abs(a.video - b.video).max() <= TOL and np.abs(a.audio - b.audio).max() <= TOL
    finally:
        ranks.close()
