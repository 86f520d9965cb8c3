"""Scaling on the backlog: the pure decisions the Serve policy and the simulator share."""

from serving.control_plane.autoscaling import DenoiseLoad, denoise_replicas, dispatch_window


def _load(queued, in_progress=0, step=None):
    return DenoiseLoad(queued=queued, in_progress=in_progress, per_replica=32, steps_per_job=8,
                       request_step_seconds=step)


def test_a_backlog_in_the_store_scales_the_pool_even_when_the_stages_see_a_window():
    bounds = dict(min_replicas=1, max_replicas=8, drain_seconds=30)
    assert denoise_replicas(_load(0), **bounds) == 1
    # 1000 queued jobs behind a window of 32: Serve would see 32 ongoing requests (about 1 replica).
    assert denoise_replicas(_load(968, 32), **bounds) == 8
    # Measured: 0.02 s per request-step, 8 steps: 1000 jobs are 160 replica-seconds: 6 replicas drain them in 30 s.
    assert denoise_replicas(_load(968, 32, step=0.02), **bounds) == 6
    assert denoise_replicas(_load(0, 64, step=0.001), **bounds) == 2  # never below what runs now
    assert denoise_replicas(_load(10**6, 0, step=1.0), **bounds) == 8  # within max_replicas


def test_the_dispatch_window_follows_the_running_denoisers():
    assert dispatch_window(1, 32, cap=1024) == 32
    assert dispatch_window(4, 32, cap=1024) == 128
    assert dispatch_window(0, 32, cap=1024) == 32  # starting: one replica's worth
    assert dispatch_window(100, 32, cap=1024) == 1024
