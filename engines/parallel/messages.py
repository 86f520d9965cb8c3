"""How engine rank 0 tells its followers what to do next.

A message is a header and then its tensors. The header is one fixed-size int64 tensor, broadcast
from rank 0 over the control group (gloo, CPU; followers wait there between requests for
IDLE_TIMEOUT, rank 0's send gives up after the engine's timeout)::

    [MAGIC, kind, count, then per tensor: dtype code (-1: None), ndim, size of each dim (MAX_DIMS slots)]

Then each tensor that is not None is broadcast over the data group (the default backend, on the
rank's device, the engine's timeout), in order. No pickling: the header is a plain tensor, so the
same code runs on gloo and NCCL, and a step's inputs may have any shape (each step is one shape
bucket; the next may be another).

Kinds: FORWARD (the `DiTInputs` of one DiT step, fields in declaration order, then the rows' LoRA
adapters or None), DECODE (the latents of one video and its tile plan, engines/parallel/decode.py)
and STOP (followers return). The adapters travel by name and scale, one list per batch row, as UTF-8
JSON in a uint8 tensor: each follower loads them by name from its own ``model.lora.dir``, never as
weights over the wire.

`Leader` is rank 0's end. It turns any failure of a round (a dead rank: "Connection closed by
peer"; a hung one: the group's timeout) into one `ParallelError` and refuses further rounds:
after a failed collective the ranks are no longer in step and the group cannot be reused.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist

from engines.dit_backend import DiTInputs
from engines.errors import ParallelError
from engines.parallel.layout import ParallelGroups

MAGIC = 0x4B494E4F  # "KINO": a header that does not start with it means the ranks are out of step
MAX_TENSORS = 12
MAX_DIMS = 6
_SLOT = 2 + MAX_DIMS
HEADER_LEN = 3 + MAX_TENSORS * _SLOT
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8,
          torch.bool)


class MessageKind(enum.IntEnum):
    STOP = 0
    FORWARD = 1
    DECODE = 2


def encode_header(kind: MessageKind, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"a message carries at most {MAX_TENSORS} tensors, got {len(tensors)}")
    header = torch.zeros(HEADER_LEN, dtype=torch.int64)
    header[:3] = torch.tensor([MAGIC, int(kind), len(tensors)])
    for i, t in enumerate(tensors):
        slot = header[3 + i * _SLOT: 3 + (i + 1) * _SLOT]
        if t is None:
            slot[0] = -1
            continue
        if t.dtype not in DTYPES or t.ndim > MAX_DIMS:
            raise ValueError(f"tensor {i} of a message: {t.dtype} with {t.ndim} dims cannot travel "
                             f"(dtypes {DTYPES}, at most {MAX_DIMS} dims)")
        slot[0], slot[1] = DTYPES.index(t.dtype), t.ndim
        slot[2:2 + t.ndim] = torch.tensor(t.shape)
    return header


def decode_header(header: torch.Tensor) -> tuple[MessageKind, list[tuple[torch.dtype, tuple[int, ...]] | None]]:
    """(kind, per tensor: (dtype, shape) or None)."""
    values = header.tolist()
    if values[0] != MAGIC:
        raise ParallelError(f"a message header starts with {values[0]:#x}, not {MAGIC:#x}: the ranks are out of step")
    specs: list[tuple[torch.dtype, tuple[int, ...]] | None] = []
    for i in range(values[2]):
        code, ndim, *dims = values[3 + i * _SLOT: 3 + (i + 1) * _SLOT]
        specs.append(None if code < 0 else (DTYPES[code], tuple(dims[:ndim])))
    return MessageKind(values[1]), specs


def receive(groups: ParallelGroups) -> tuple[MessageKind, list[torch.Tensor | None]]:
    """A follower's next message (blocks until rank 0 sends one)."""
    header = torch.empty(HEADER_LEN, dtype=torch.int64)
    dist.broadcast(header, groups.layout.leader, group=groups.control)
    kind, specs = decode_header(header)
    tensors: list[torch.Tensor | None] = []
    for spec in specs:
        if spec is None:
            tensors.append(None)
            continue
        dtype, shape = spec
        t = torch.empty(shape, dtype=dtype, device=groups.device)
        dist.broadcast(t, groups.layout.leader, group=groups.data)
        tensors.append(t)
    return kind, tensors


NamedRows = list[list[tuple[str, float]]]
"""Each batch row's LoRA adapters as (name, scale) pairs (an empty list: none)."""


def pack_forward(inputs: DiTInputs, adapters: NamedRows | None = None) -> list[torch.Tensor | None]:
    """A FORWARD message: the inputs, then the rows' adapters (None: no row has any)."""
    named = None
    if adapters is not None and any(adapters):
        if len(adapters) != inputs.batch_size:
            raise ValueError(f"adapters for {len(adapters)} rows, a batch of {inputs.batch_size}")
        data = json.dumps([[[name, float(scale)] for name, scale in row] for row in adapters]).encode()
        named = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return [*(getattr(inputs, f.name) for f in dataclasses.fields(DiTInputs)), named]


def unpack_forward(tensors: Sequence[torch.Tensor | None]) -> tuple[DiTInputs, NamedRows | None]:
    names = [f.name for f in dataclasses.fields(DiTInputs)]
    if len(tensors) != len(names) + 1:
        raise ParallelError(f"a FORWARD message carries {len(tensors)} tensors; DiTInputs has {len(names)} fields "
                            "and the adapters follow (the ranks run different Kino versions?)")
    inputs = DiTInputs(**dict(zip(names, tensors[:-1], strict=True)))
    named = tensors[-1]
    if named is None:
        return inputs, None
    rows = json.loads(named.cpu().numpy().tobytes().decode())
    return inputs, [[(str(name), float(scale)) for name, scale in row] for row in rows]


class Leader:
    """Engine rank 0's end of the messages: sends them and guards every round."""

    def __init__(self, groups: ParallelGroups) -> None:
        if not groups.is_leader:
            raise ValueError(f"only engine rank 0 leads; this process is engine rank {groups.rank}")
        self.groups = groups
        self._failure: str | None = None

    def send(self, kind: MessageKind, tensors: Sequence[torch.Tensor | None] = ()) -> None:
        """Broadcast one message (call inside `round`)."""
        g = self.groups
        dist.broadcast(encode_header(kind, tensors), g.layout.leader, group=g.control)
        for t in tensors:
            if t is not None:
                dist.broadcast(t.to(g.device).contiguous(), g.layout.leader, group=g.data)

    @contextmanager
    def round(self, what: str) -> Iterator[None]:
        """Run one exchange with the followers; any failure in it fails the group, once and for all."""
        if self._failure is not None:
            raise ParallelError(f"the engine's rank group failed earlier and cannot be reused ({self._failure})")
        try:
            yield
        except Exception as e:  # a collective error leaves the ranks out of step, whatever raised it
            self._failure = f"{what}: {type(e).__name__}: {e}"
            raise ParallelError(
                f"{what} failed on the engine spread over global ranks {list(self.groups.layout.ranks)} "
                f"(model.parallel: cfg={self.groups.layout.cfg}, ulysses={self.groups.layout.ulysses}): a rank "
                f"died, stopped answering within {self.groups.timeout.total_seconds():g} s, or failed; restart "
                f"all its ranks. Cause: {type(e).__name__}: {e}") from e

    def stop(self) -> None:
        """Send STOP: every follower's `serve_follower` returns."""
        with self.round("stopping the followers"):
            self.send(MessageKind.STOP)

    @property
    def failed(self) -> bool:
        return self._failure is not None
