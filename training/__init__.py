"""Training Kino's ``demo`` model: a tiny LTX-2 taught a synthetic world on a CPU, and the truth tests of its output.

- `training.world`: the seeded procedural world (one coloured object that bounces or slides, with a click at
  every contact) and its ground truth.
- `training.train_demo`: ``python -m training.train_demo`` trains the real LTX-2 classes on it, stage by stage,
  and writes the checkpoint the ``demo`` preset loads (engines/weights/demo/).
- `training.truth`: what a generated clip shows and sounds like, measured (colour, motion, audio-visual sync,
  remix and image-to-video fidelity).

This package sits above engines (it imports them) and never imports serving or Ray.
"""
