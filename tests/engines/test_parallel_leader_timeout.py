"""The leader's header send is bounded by the engine's timeout, not the followers' idle wait.

gloo's sender waits until the receiver has posted its receive. A follower stopped before it comes
back for the next header (SIGSTOP'd, swapped out, wedged in its own code) used to hold rank 0's
send on the control group for IDLE_TIMEOUT (30 days): the CI run of the dead-or-wedged test hung
there whenever the SIGSTOP landed in that window. Here the follower joins the engine's groups and
never receives, every time.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from engines.errors import ParallelError
from engines.parallel import Leader, ParallelGroups, ParallelLayout
from engines.parallel.messages import MessageKind
from engines.parallel.world import Rendezvous, join_world

LAYOUT = ParallelLayout(2, 1, (0, 1))
TIMEOUT = timedelta(seconds=3)


def _follower_that_never_receives(rendezvous: Rendezvous) -> None:
    join_world(rendezvous, 1, rendezvous.connect())
    ParallelGroups.build(LAYOUT, "cpu", TIMEOUT)
    time.sleep(120)  # killed by the test long before


def test_a_follower_that_does_not_come_back_for_the_header_fails_the_leader_within_the_timeout():
    assert not dist.is_initialized()
    rendezvous, store = Rendezvous.open(2, "gloo")
    follower = mp.get_context("spawn").Process(target=_follower_that_never_receives, args=(rendezvous,), daemon=True)
    follower.start()
    try:
        join_world(rendezvous, 0, store)
        leader = Leader(ParallelGroups.build(LAYOUT, "cpu", TIMEOUT))
        started = time.perf_counter()
        with pytest.raises(ParallelError, match=r"failed on the engine .* within 3 s"):
            with leader.round("a DiT step"):
                leader.send(MessageKind.FORWARD)
        waited = time.perf_counter() - started
        assert waited < TIMEOUT.total_seconds() + 5, f"the leader waited {waited:.1f} s for the header's receiver"
        assert leader.failed
    finally:
        follower.kill()
        follower.join()
        if dist.is_initialized():
            dist.destroy_process_group()
