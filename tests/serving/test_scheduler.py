"""The step scheduler on its own (no torch, no Ray)."""

import subprocess
import sys

import pytest

from serving.data_plane.scheduler import Batch, StepScheduler


class Steps:
    """A scheduler plus the step counts the requests' engine states keep (the one step count)."""

    def __init__(self, **kw) -> None:
        self.s = StepScheduler(**kw)
        self.left: dict[str, int] = {}

    def add(self, rid: str, bucket: str, priority: int, steps: int) -> None:
        self.s.add(rid, bucket, priority)
        self.left[rid] = steps

    def next_batch(self) -> Batch | None:
        return self.s.next_batch()

    def complete(self, b: Batch) -> list[str]:
        """What the denoise loop does after a step: count it in each state, report the finished."""
        for rid in b.request_ids:
            self.left[rid] -= 1
        finished = [rid for rid in b.request_ids if self.left[rid] == 0 and rid in self.s]
        self.s.complete(b, finished)
        return finished

    def drain(self) -> list[tuple[str, ...]]:
        out = []
        while (b := self.next_batch()) is not None:
            out.append(b.request_ids)
            self.complete(b)
        return out


def test_batches_same_bucket_up_to_max_batch_size():
    s = Steps(max_batch_size=2, max_running=8)
    for i in range(3):
        s.add(f"r{i}", "64x64", priority=5, steps=2)
    assert s.drain() == [("r0", "r1"), ("r0", "r1"), ("r2",), ("r2",)]


def test_admits_new_requests_at_step_boundaries():
    s = Steps(max_batch_size=4, max_running=4)
    s.add("a", "b1", 5, 3)
    b = s.next_batch()
    assert b.request_ids == ("a",)
    s.add("b", "b1", 5, 1)  # arrives while a's first step runs
    s.complete(b)
    b = s.next_batch()
    assert b.request_ids == ("a", "b")  # joined at the very next boundary
    assert s.complete(b) == ["b"]  # retired after its only step
    assert s.next_batch().request_ids == ("a",)


def test_priority_then_age_and_bucket_of_the_most_urgent():
    s = Steps(max_batch_size=8, max_running=8)
    s.add("old-low", "small", priority=1, steps=5)
    s.add("new-low", "small", priority=1, steps=5)
    s.add("high", "large", priority=9, steps=2)
    # The high-priority request's bucket runs first, alone (other shape), until it is done.
    b = s.next_batch()
    assert b.request_ids == ("high",)
    assert s.complete(b) == []
    b = s.next_batch()
    assert b.request_ids == ("high",)
    assert s.complete(b) == ["high"]
    assert s.next_batch().request_ids == ("old-low", "new-low")


def test_max_running_bounds_admission_and_waiting_requests_keep_order():
    s = Steps(max_batch_size=2, max_running=2)
    for rid, prio in (("a", 1), ("b", 1), ("c", 1), ("urgent", 9)):
        s.add(rid, "x", prio, 1)
    b = s.next_batch()
    assert b.request_ids == ("urgent", "a") and s.s.num_running == 2 and s.s.num_waiting == 2
    s.complete(b)
    assert s.next_batch().request_ids == ("b", "c")


def test_batching_off_with_max_batch_size_1():
    s = Steps(max_batch_size=1, max_running=4)
    for i in range(3):
        s.add(f"r{i}", "x", 5, 1)
    assert s.drain() == [("r0",), ("r1",), ("r2",)]


def test_remove_while_stepping_and_validation():
    s = Steps(max_batch_size=4, max_running=4)
    s.add("a", "x", 5, 2)
    s.add("b", "x", 5, 1)
    b = s.next_batch()
    assert s.s.remove("a") and "a" not in s.s
    assert s.complete(b) == ["b"]  # a is gone (its result dropped); b finished
    assert s.next_batch() is None
    assert not s.s.remove("zzz")
    s.add("c", "x", 5, 2)
    with pytest.raises(ValueError):
        s.add("c", "x", 5, 2)
    with pytest.raises(ValueError):
        StepScheduler(max_batch_size=4, max_running=2)


def test_scheduler_module_imports_no_torch_and_no_ray():
    code = "import sys, serving.data_plane.scheduler; bad = {'torch', 'ray'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fifo_policy_ignores_priority():
    s = Steps(max_batch_size=1, max_running=4, policy="fifo")
    s.add("low", "x", priority=1, steps=1)
    s.add("high", "x", priority=9, steps=1)
    assert s.drain() == [("low",), ("high",)]
    with pytest.raises(ValueError):
        StepScheduler(max_batch_size=1, max_running=1, policy="lottery")


def test_rotation_gives_a_lone_shape_its_turns():
    def run(rotate: bool) -> list[str]:
        s = Steps(max_batch_size=2, max_running=16, rotate_buckets=rotate)
        for i in range(4):
            s.add(f"big{i}", "512", priority=5, steps=3)
        s.add("small", "64", priority=5, steps=3)
        order = []
        while (b := s.next_batch()) is not None:
            order.append(b.bucket)
            s.complete(b)
        return order

    oldest_first = run(False)
    rotated = run(True)
    assert oldest_first.index("64") == 6  # waits until every older "512" request is done
    assert rotated[:4] == ["512", "64", "512", "64"]  # takes turns from the start
    assert sorted(oldest_first) == sorted(rotated)  # the same work, in another order


def test_priority_preempts_between_steps():
    s = Steps(max_batch_size=1, max_running=8)
    s.add("low", "x", priority=1, steps=4)
    b = s.next_batch()
    s.complete(b)  # low has run one step
    s.add("high", "x", priority=9, steps=2)
    assert s.drain() == [("high",), ("high",), ("low",), ("low",), ("low",)]  # low paused, then resumed


def test_a_token_budget_bounds_each_forward_and_a_measured_cap_narrows_a_bucket():
    s = StepScheduler(max_batch_size=8, max_running=8, max_tokens=1000)
    for i in range(5):
        s.add(f"r{i}", "big", priority=5, tokens=400)
    assert s.next_batch().request_ids == ("r0", "r1")  # 800 tokens; a third would pass 1000
    s.set_cap("big", 1)
    assert s.next_batch().request_ids == ("r0",) and s.cap("big") == 1 and s.has_cap("big")
    with pytest.raises(ValueError, match="at most 1000 fit"):
        s.add("huge", "big", priority=5, tokens=1001)
