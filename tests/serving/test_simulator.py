"""The cluster simulator behaves like a queueing system should."""

import math

from loadtests.simulator import Scenario, Timings, simulate

GPU_LIKE = Timings(encode=0.2, step_1=0.5, steps=30, decode=4.0, alpha=0.15, max_batch=8)


def test_capacity_split_and_work_share():
    share = GPU_LIKE.work_share()
    assert math.isclose(sum(share.values()), 1.0) and share["denoise"] > share["encode"]
    assert GPU_LIKE.step_time(8) > GPU_LIKE.step_time(1)
    assert GPU_LIKE.capacity(100) > 5 * GPU_LIKE.capacity(10)


def test_under_capacity_everything_gets_through():
    cap = GPU_LIKE.capacity(20)
    r = simulate(Scenario(gpus=20, rate=0.5 * cap, timings=GPU_LIKE, duration=1200, warmup=300, cold_start=30))
    assert abs(r.throughput - 0.5 * cap) / (0.5 * cap) < 0.15
    assert r.p95 >= r.p50 > GPU_LIKE.encode + GPU_LIKE.decode


def test_more_load_means_more_replicas_and_longer_tails():
    cap = GPU_LIKE.capacity(40)
    light = simulate(Scenario(gpus=40, rate=0.3 * cap, timings=GPU_LIKE, duration=1200, cold_start=30))
    heavy = simulate(Scenario(gpus=40, rate=0.9 * cap, timings=GPU_LIKE, duration=1200, cold_start=30))
    assert heavy.replicas["denoise"] > light.replicas["denoise"]
    assert heavy.p95 > light.p95
    assert heavy.replicas["denoise"] <= heavy.max_replicas["denoise"] + 1e-6
