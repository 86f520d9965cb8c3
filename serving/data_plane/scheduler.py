"""Step-level continuous batching: which requests take the next denoising step.

Pure bookkeeping over request ids, shape buckets and priorities; it imports no torch and no Ray.
The denoise loop (`serving.data_plane.denoise_loop`) asks `next_batch()` at every step boundary, runs one
transformer forward for the returned requests, then reports back with `complete()` which of them
took their last step. Step counts live in one place, each request's engine state; the scheduler
only hears which requests are finished.

At each boundary the scheduler
1. admits waiting requests (most urgent first) while fewer than `max_running` run;
2. picks a bucket: requests of one bucket share a latent shape, so they can share a forward.
   By default the bucket of the most urgent running request; with `rotate_buckets`, the buckets
   holding requests of the top priority take turns, so a shape nobody else asks for still gets
   its share of steps while a popular one keeps arriving;
3. takes running requests of that bucket, most urgent first, up to the bucket's cap (`max_batch_size`,
   or less where the loop measured that a wider forward stops paying: `set_cap`) and while their
   tokens (rows x latent tokens) stay within `max_tokens`, the memory bound of one forward;
and `complete()` retires the requests the loop reports finished.

Urgency is priority, then arrival (`policy: priority`): a request not chosen keeps its state and
waits, so a higher-priority arrival overtakes lower ones at the very next step boundary
(preemption between steps). `policy: fifo` ignores priority (arrival only), for comparison.

The transformer cannot mix shapes in one forward: its video self-attention takes a mask, but the
audio stream and the audio<->video cross-attention do not, so padding one request's tokens would
leak into another's audio. Buckets are therefore exact shapes.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Hashable
from dataclasses import dataclass, field
from typing import Literal, get_args

Policy = Literal["priority", "fifo"]
"""priority: higher priority first, preempting between steps; fifo: arrival order only."""
POLICIES: tuple[str, ...] = get_args(Policy)


@dataclass
class StepRequest:
    request_id: str
    bucket: Hashable  # requests with equal buckets can share a forward
    priority: int  # higher runs first
    tokens: int = 0  # what it adds to a forward: rows x (video + audio latent tokens)
    arrival: int = 0
    urgency: tuple[int, int] = (0, 0)  # set by the scheduler's policy: smaller runs first


@dataclass(frozen=True)
class Batch:
    bucket: Hashable
    request_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.request_ids)


@dataclass
class StepScheduler:
    max_batch_size: int
    max_running: int
    policy: Policy = "priority"
    rotate_buckets: bool = False
    max_tokens: int | None = None  # None: no bound but the count
    _caps: dict[Hashable, int] = field(default_factory=dict)  # bucket -> measured batch cap
    _waiting: dict[str, StepRequest] = field(default_factory=dict)
    _running: dict[str, StepRequest] = field(default_factory=dict)
    _arrivals: itertools.count = field(default_factory=itertools.count)
    _turns: dict[Hashable, int] = field(default_factory=dict)  # bucket -> step boundary it last ran
    _boundary: int = 0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_running < self.max_batch_size:
            raise ValueError("need 1 <= max_batch_size <= max_running")
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r} is not one of {POLICIES}")

    # -- requests come and go ---------------------------------------------------------------
    def add(self, request_id: str, bucket: Hashable, priority: int, tokens: int = 0) -> None:
        if request_id in self._waiting or request_id in self._running:
            raise ValueError(f"request {request_id} is already scheduled")
        if self.max_tokens is not None and tokens > self.max_tokens:
            raise ValueError(f"request {request_id} needs {tokens} tokens per forward; at most {self.max_tokens} fit")
        arrival = next(self._arrivals)
        urgency = (-priority, arrival) if self.policy == "priority" else (0, arrival)
        self._waiting[request_id] = StepRequest(request_id, bucket, priority, tokens, arrival, urgency=urgency)

    def set_cap(self, bucket: Hashable, cap: int) -> None:
        """At most `cap` requests of `bucket` per forward (measured: wider ones stop paying)."""
        self._caps[bucket] = max(1, min(cap, self.max_batch_size))

    def cap(self, bucket: Hashable) -> int:
        return self._caps.get(bucket, self.max_batch_size)

    def has_cap(self, bucket: Hashable) -> bool:
        return bucket in self._caps

    def remove(self, request_id: str) -> bool:
        """Drop a request (cancelled or failed); True if it was scheduled."""
        return (self._waiting.pop(request_id, None) or self._running.pop(request_id, None)) is not None

    # -- one step boundary ----------------------------------------------------------------------
    def next_batch(self) -> Batch | None:
        self._admit()
        if not self._running:
            return None
        lead = min(self._running.values(), key=lambda r: r.urgency)
        bucket = lead.bucket
        if self.rotate_buckets:  # among the top-priority requests' buckets, the one that waited longest
            top = [r for r in self._running.values() if r.urgency[0] == lead.urgency[0]]
            bucket = min(dict.fromkeys(r.bucket for r in top), key=lambda b: (self._turns.get(b, -1),
                         min(r.urgency for r in top if r.bucket == b)))
        self._boundary += 1
        self._turns[bucket] = self._boundary
        same = sorted((r for r in self._running.values() if r.bucket == bucket), key=lambda r: r.urgency)
        chosen, tokens = [], 0
        for r in same[: self.cap(bucket)]:
            if chosen and self.max_tokens is not None and tokens + r.tokens > self.max_tokens:
                break
            chosen.append(r.request_id)
            tokens += r.tokens
        return Batch(bucket, tuple(chosen))

    def complete(self, batch: Batch, finished: Collection[str]) -> None:
        """`batch` ran; retire the requests of it that took their last step (as their states say)."""
        for rid in batch.request_ids:
            if rid in finished:
                self._running.pop(rid, None)  # (already gone if removed while its step ran)

    def _admit(self) -> None:
        free = self.max_running - len(self._running)
        if free <= 0 or not self._waiting:
            return
        for req in sorted(self._waiting.values(), key=lambda r: r.urgency)[:free]:
            del self._waiting[req.request_id]
            self._running[req.request_id] = req

    # -- introspection ----------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._running or request_id in self._waiting
