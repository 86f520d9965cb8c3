"""The control plane: which job runs where and when, and what its watchers see.

- `dispatcher.py`: claims queued jobs under leases and drives each through the stages (the job runner);
- `progress.py`: the pushed progress events and cancels between dispatchers and watchers (`ProgressHub`);
- `autoscaling.py`: how many Denoiser replicas the backlog needs, and the dispatch window they make.

It moves jobs and events, never tensors: nothing here imports torch or Ray (tests/test_layers.py).
"""
