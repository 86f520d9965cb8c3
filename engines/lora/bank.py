"""The LoRA adapters one replica holds: loaded by name on first use, the least recently used dropped past a bound.

A replica serves many adapters over time but holds few: `AdapterBank` is a `cachetools.LRUCache` of
`max_loaded` adapters (`model.lora`), read from `model.lora.dir` when a request first names one. Its counters
(loads, hits, evictions, load seconds) are plain numbers and optional callbacks, for the serving layer to
export as gauges; the engines know no metrics library.

An adapter a request still uses stays valid after its eviction (the request holds the object; the bank only
forgets it). A Denoiser that resolves its requests' adapters at every step (`uses`, a dict hit once loaded)
keeps the ones in flight the most recently used, so only an adapter nobody steps with is dropped, unless more
than `max_loaded` distinct adapters are in flight at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from cachetools import LRUCache

from engines.config import LoraConfig
from engines.errors import InvalidParameter, UnknownAdapter
from engines.lora.adapter import LoraAdapter, adapter_file, available_adapters, read_adapter
from engines.lora.layers import AdapterUse, RowAdapters


@dataclass(frozen=True)
class BankStats:
    """The bank's counters at one moment (what the serving layer exports)."""

    loaded: int  # adapters held now
    loads: int  # reads from disk, first uses and reloads after an eviction alike
    hits: int  # uses found loaded
    evictions: int  # adapters dropped for the bound
    load_seconds: float  # time spent reading and checking files, in all


class _CountingLRU(LRUCache):
    """An LRUCache that reports each adapter it drops for its bound (cachetools' documented `popitem` hook)."""

    def __init__(self, maxsize: int, evicted: Callable[[str, LoraAdapter], None]) -> None:
        super().__init__(maxsize=maxsize)
        self._evicted = evicted

    def popitem(self):
        name, adapter = super().popitem()
        self._evicted(name, adapter)
        return name, adapter


class AdapterBank:
    """Adapters of one transformer by name, at most `config.max_loaded` at a time (least recently used out)."""

    def __init__(self, transformer: torch.nn.Module, config: LoraConfig, *,
                 on_load: Callable[[LoraAdapter, float], None] | None = None,
                 on_evict: Callable[[LoraAdapter], None] | None = None) -> None:
        """`on_load(adapter, seconds)` and `on_evict(adapter)` are called as it happens (e.g. to update gauges)."""
        self.transformer = transformer
        self.config = config
        self._on_load, self._on_evict = on_load, on_evict
        self._cache = _CountingLRU(config.max_loaded, self._evicted)
        self._lock = threading.Lock()  # a prefetch thread and the step thread may both load
        self.loads = self.hits = self.evictions = 0
        self.load_seconds = 0.0

    def observe(self, on_load: Callable[[LoraAdapter, float], None] | None = None,
                on_evict: Callable[[LoraAdapter], None] | None = None) -> None:
        """Call these from now on as adapters load and go (a replica's metrics, set after its engine is built)."""
        self._on_load, self._on_evict = on_load, on_evict

    def available(self) -> list[str]:
        """Adapter names the directory holds."""
        return available_adapters(self.config.dir)

    @property
    def loaded(self) -> list[str]:
        """Names held now, least recently used first."""
        with self._lock:
            return list(self._cache.keys())

    def stats(self) -> BankStats:
        with self._lock:
            return BankStats(loaded=len(self._cache), loads=self.loads, hits=self.hits, evictions=self.evictions,
                             load_seconds=self.load_seconds)

    def get(self, name: str) -> LoraAdapter:
        """The adapter `name`, loaded now if it is not held (`UnknownAdapter` lists the names there are;
        `AdapterError` says what in its file does not fit this transformer)."""
        with self._lock:
            adapter = self._cache.get(name)  # a get marks it most recently used
            if adapter is not None:
                self.hits += 1
                return adapter
            directory = self.config.dir
            path = adapter_file(directory, name) if directory is not None else None
            if path is None:
                raise UnknownAdapter(name, self.available(), directory if directory is not None else
                                     "(no adapter directory: model.lora.dir is not set)")
            start = time.perf_counter()
            adapter = read_adapter(path, name, self.transformer)
            seconds = time.perf_counter() - start
            self.loads += 1
            self.load_seconds += seconds
            self._cache[name] = adapter  # may evict the least recently used
        if self._on_load is not None:
            self._on_load(adapter, seconds)
        return adapter

    def uses(self, requested: Sequence[tuple[str, float]]) -> RowAdapters:
        """One request's adapters, as (name, scale) pairs, checked against `model.lora` (how many, which scales,
        each at most once) and loaded: what `lora_rows` takes for each of the request's rows."""
        cfg = self.config
        if len(requested) > cfg.max_per_request:
            raise InvalidParameter("loras", [n for n, _ in requested], f"at most {cfg.max_per_request} adapters")
        names = [n for n, _ in requested]
        if len(set(names)) != len(names):
            raise InvalidParameter("loras", names, "each adapter at most once")
        lo, hi = cfg.scale_range
        for name, scale in requested:
            if not lo <= scale <= hi:
                raise InvalidParameter(f"loras[{name}].scale", scale, f"a scale in [{lo:g}, {hi:g}]")
        return tuple(AdapterUse(self.get(name), float(scale)) for name, scale in requested)

    def _evicted(self, name: str, adapter: LoraAdapter) -> None:
        self.evictions += 1  # under self._lock: the cache evicts inside `get`'s insert
        if self._on_evict is not None:
            self._on_evict(adapter)
