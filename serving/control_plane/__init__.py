"""The control plane: which job runs where and when, and what its watchers see.

- `dispatcher.py`: claims queued jobs under leases, renews and reaps them, and moves a held job between its
  states (`HeldState`: running, cancelling, letting go, settling);
- `job_runner.py`: walks one held job through the stages and records how it ended;
- `progress.py`: the pushed progress events and cancels between dispatchers and watchers (`ProgressHub`);
- `autoscaling.py`: how many Denoiser replicas the backlog needs, and the dispatch window they make.

It moves jobs and events, never tensors: nothing here imports torch or Ray (tests/test_layers.py).
"""
