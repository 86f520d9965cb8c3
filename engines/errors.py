"""Errors the engines raise. Each names what was wrong, so callers can say it plainly."""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Base class of every error raised by `engines`."""


class ConfigError(EngineError, ValueError):
    """A configuration key holds a value the engines cannot run with."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


class InvalidParameter(EngineError, ValueError):
    """A generation parameter is outside what the model allows.

    Carries the field, the value given and the allowed range, e.g.
    ``width=100 is not allowed: a multiple of 32 in [64, 1920]``.
    """

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is not allowed: {allowed}")


class CheckpointError(EngineError):
    """A checkpoint directory is missing a component or holds one that cannot be loaded."""


class OutOfMemory(EngineError):
    """A step or a decode ran out of device memory; the memory was freed and the engine keeps serving.
    Raised for the requests it could not run (alone); the others go on."""


class ParallelError(EngineError):
    """An engine spread over several ranks (engines/parallel) lost one: a rank died, stopped
    answering within the process group's timeout, or failed. The group cannot be reused; restart
    all its ranks."""


class AdapterError(EngineError, ValueError):
    """A LoRA adapter file cannot be applied to this model (engines/lora/adapter.py). Names the file and the
    key at fault, so whoever made the adapter can find what to fix, e.g. ``LoRA adapter /a/x.safetensors:
    transformer.blocks.0.to_q.lora_A.weight: matches no module of the transformer``."""

    def __init__(self, path: Any, key: str | None, message: str) -> None:
        self.path = path
        self.key = key
        super().__init__(f"LoRA adapter {path}: {key}: {message}" if key else f"LoRA adapter {path}: {message}")


class UnknownAdapter(EngineError, LookupError):
    """A request names a LoRA adapter the adapter directory does not hold; lists the names it does."""

    def __init__(self, name: str, available: list[str], where: Any = None) -> None:
        self.name = name
        self.available = available
        place = f" in {where}" if where is not None else ""
        names = ", ".join(available) if available else "none"
        super().__init__(f"unknown LoRA adapter {name!r}{place}; available: {names}")
