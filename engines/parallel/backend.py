"""Rank 0's DiT backend for an engine spread over several ranks.

The Denoiser on engine rank 0 batches requests and calls `forward(inputs)` once per step, as with
any backend. `ParallelBackend` broadcasts the `DiTInputs` to the followers (engines/parallel/
messages.py), runs rank 0's share of the split forward (engines/parallel/transformer.py) and
returns the gathered outputs: exactly what `EagerBackend` returns for the same inputs.

LoRA adapters: the Denoiser attaches the rows' adapters to rank 0's transformer (`BatchedLora.rows`)
and passes them as `lora`; the FORWARD message names each row's adapters and scales, each follower
attaches the same from its own `AdapterBank`, and every rank narrows them to the rows it computes
(`ShardingHooks.narrow`).
"""

from __future__ import annotations

import torch

from engines.dit_backend import DiTInputs, EagerBackend
from engines.lora import LoraRows
from engines.parallel.messages import Leader, MessageKind, pack_forward
from engines.parallel.transformer import parallelize


class ParallelBackend(EagerBackend):
    """The eager call, split over the ranks of `leader`'s engine; the followers run `serve_follower`."""

    name = "parallel"
    # The step cache decides per request which blocks run, from hooks on rank 0's blocks; here those
    # blocks see only rank 0's rows and tokens, and the followers would not know the decision.
    runs_block_hooks = False
    runs_lora = True  # the followers load the adapters by name from their own model.lora.dir

    def __init__(self, transformer: torch.nn.Module, leader: Leader) -> None:
        super().__init__(transformer)
        self.leader = leader
        self.layout = leader.groups.layout
        self._hooks = parallelize(transformer, leader.groups)

    def forward(self, inputs: DiTInputs, lora: LoraRows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # Refused before any message, so the followers never see a step they cannot run.
        self.layout.check_video_tokens(inputs.video.shape[1], f"a batch of {inputs.batch_size} rows")
        named = None if lora is None else [[(u.adapter.name, u.scale) for u in row] for row in lora.rows]
        with self.leader.round("a DiT step"):
            self.leader.send(MessageKind.FORWARD, pack_forward(inputs, named))
            with self._hooks.narrow(lora, inputs.batch_size):
                return super().forward(inputs)

    def close(self) -> None:
        """Take the hooks off the transformer (it runs on one rank again); the followers keep serving."""
        self._hooks.remove()
