"""Per-request LoRA adapters inside step batches (issue 28, the engine half).

- `adapter`: adapter files by name (diffusers' LTX-2 LoRA layout), read and checked against the DiT;
- `bank`: the adapters one replica holds, an LRU of ``model.lora.max_loaded``, with load/eviction counters;
- `layers`: one forward whose rows each add their own adapters (`BatchedLora.rows`), narrowed to the rows a
  part of the forward computes (`LoraRows.select`), two interchangeable ways of computing it (grouped segment
  matmuls, gathered batched matmuls).

How the Denoiser's step batch calls it (engines/denoiser.py; the request's ``loras`` field and its validation
are engines/params.py's). The DiT forward and `DiTInputs` are unchanged:

    bank = AdapterBank(self.transformer, config.lora)          # once per replica
    lora = BatchedLora(self.transformer, config.lora.delta_path)
    ...
    # in step(states), around the one forward; _batch lays out each state's rows consecutively
    rows = request_rows([(bank.uses(s.params.loras), s.rows) for s in states])
    with lora.rows(rows) as adapters:  # None when no row has any
        video_v, audio_v = self.backend.forward(inputs, lora=adapters)

`bank.uses` validates a request's (name, scale) pairs (count, scale bounds; `UnknownAdapter`, `AdapterError`,
`InvalidParameter`) and is cheap once loaded, so resolving at every step keeps the adapters in flight the most
recently used; calling it in `prepare` too refuses a bad request before it takes a slot. A CFG request's two
rows (negative, prompt) both take its adapters, as merged weights would. Only backends that call the
diffusers model's float Linears eagerly run the hooks (`DiTBackend.runs_lora`: eager, and parallel, whose
followers load the adapters by name from their own `model.lora.dir`). What runs part of the forward on a subset
of the rows narrows the adapters to them with `LoraRows.select`: the step cache's sub-batches of computing rows
(`FirstBlockCache.forward` is given the `LoraRows`) and a CFG-parallel rank's share of the rows.
"""

from engines.lora.adapter import LoraAdapter, LoraFactors, available_adapters, read_adapter
from engines.lora.bank import AdapterBank, BankStats
from engines.lora.layers import (
    DEFAULT_PATH,
    DELTA_PATHS,
    AdapterUse,
    BatchedLora,
    GatheredDelta,
    GroupedDelta,
    LoraDelta,
    LoraRows,
    RowAdapters,
    lora_rows,
    request_rows,
)

__all__ = [
    "DEFAULT_PATH", "DELTA_PATHS", "AdapterBank", "AdapterUse", "BankStats", "BatchedLora", "GatheredDelta",
    "GroupedDelta", "LoraAdapter", "LoraDelta", "LoraFactors", "LoraRows", "RowAdapters", "available_adapters",
    "lora_rows", "read_adapter", "request_rows",
]
