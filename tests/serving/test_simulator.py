"""The cluster simulator behaves like a queueing system should."""

import dataclasses
import math

from loadtests.simulator import Network, ParallelStep, Scenario, Timings, simulate

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


LTX2_720P = ParallelStep(step_1=0.5, video_tokens=14_080, hidden=4096, layers=48)


def test_cfg_parallel_halves_the_step_and_ulysses_pays_for_its_all_to_alls():
    one, cfg2, u2 = (LTX2_720P.parts(c, u) for c, u in ((1, 1), (2, 1), (1, 2)))
    assert one["all_to_all"] == one["gathers"] == 0.0 and one["compute"] == 0.5
    assert cfg2["compute"] == 0.25 and cfg2["all_to_all"] == 0.0 and 0 < cfg2["gathers"] < 0.01
    assert u2["compute"] == 0.5 * (0.05 + 0.95 / 2) and u2["all_to_all"] > 0
    # A Ulysses group that leaves the node crosses the NICs: slower per byte than NVLink.
    big = ParallelStep(step_1=48.0, video_tokens=124_000, hidden=4096, layers=48)
    within = big.parts(1, 8)["all_to_all"]
    across = dataclasses.replace(big, network=Network(gpus_per_node=4)).parts(1, 8)["all_to_all"]
    assert across > 3 * within
    assert big.seconds(2, 8) < big.seconds(2, 4) < big.seconds(2, 1) < big.seconds(1, 1)


def test_a_replica_over_several_gpus_takes_that_many_from_the_budget():
    two = Timings(encode=0.2, step_1=0.26, steps=30, decode=4.0, alpha=0.15, max_batch=8, ranks=2)
    assert two.replicas(100)["denoise"] < GPU_LIKE.replicas(100)["denoise"]
    assert sum(n * (2 if s == "denoise" else 1) for s, n in two.replicas(100).items()) <= 100
    r = simulate(Scenario(gpus=40, rate=0.5 * two.capacity(40), timings=two, duration=900, cold_start=30))
    assert r.replicas["denoise"] <= r.max_replicas["denoise"] + 1e-6 and r.throughput > 0
