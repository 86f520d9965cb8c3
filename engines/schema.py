"""How Kino's configuration is typed: one mechanism for the model's and the server's settings.

A config class is a frozen pydantic dataclass declared with `@section("key")`: bounds sit on the
field (`Annotated[int, Field(ge=1)]`), enumerations are `Literal` types shared with the code that
uses them, and the docstring under each field is its description. Pydantic does the checking
(types, bounds, choices, unknown keys); rules across fields go in `__post_init__` through
`require(...)`. Every error becomes one `ConfigError` naming the full key, e.g.
``model.architecture.connectors.num_attention_heads: must divide the text hidden size 32``.

`load(cls, mapping, key)` builds a section from plain data (a YAML mapping), `merge` lays one
mapping over another (environment overrides, preset overrides) and `env_overrides` reads
``KINO_<SECTION>__<KEY>`` variables. Nothing else in Kino parses configuration.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, get_args

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from engines.errors import ConfigError

ENV_PREFIX = "KINO_"
T = TypeVar("T")

_CONFIG = ConfigDict(extra="forbid", use_attribute_docstrings=True, arbitrary_types_allowed=True)


class Invalid(ValueError):
    """A rule across fields failed; `field` is the key (relative to its section) to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise Invalid(field, message)


def section(key: str) -> Callable[[type[T]], type[T]]:
    """Make `cls` a frozen, validated config dataclass whose errors are `ConfigError`s under `key`."""

    def wrap(cls: type[T]) -> type[T]:
        made = dataclass(frozen=True, config=_CONFIG)(cls)
        init = made.__init__

        @functools.wraps(init)
        def checked_init(self, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as e:
                raise config_error(e, key, made) from None

        made.__init__ = checked_init  # type: ignore[method-assign]
        made.__config_key__ = key  # type: ignore[attr-defined]
        return made

    return wrap


def load(cls: type[T], data: Any, key: str | None = None) -> T:
    """A `cls` from plain data (mappings, lists, scalars); errors name the key under `key`."""
    where = key or getattr(cls, "__config_key__", "")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(where, f"must be a mapping, got {type(data).__name__}")
    try:
        return TypeAdapter(cls).validate_python(dict(data))
    except ValidationError as e:
        raise config_error(e, where, cls) from None


def replace(obj: T, **changes: Any) -> T:
    """A copy of a config object with some fields changed, validated again."""
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def config_error(e: ValidationError, prefix: str, root: type | None = None) -> ConfigError:
    """The first problem of a validation error as a `ConfigError` naming its full key (`root`: the
    class validated, to list the keys it knows)."""
    err = e.errors(include_url=False)[0]
    loc = [str(part) for part in err["loc"]]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, Invalid):
        loc.append(cause.field)
        message = cause.message
    elif err["type"] == "unexpected_keyword_argument":
        known = _fields_at(root, loc[:-1]) if root is not None else None
        message = "unknown key" + (f" (known: {', '.join(known)})" if known else "")
    elif err["type"] in ("dataclass_type", "dataclass_args_type", "dict_type"):
        message = "must be a mapping"
    else:
        message = f"{err['input']!r} is not allowed: " + re.sub(r"^\w+ should ", "must ", err["msg"])
    key = ".".join(p for p in (prefix, *loc) if p)
    return ConfigError(key, message)


def _fields_at(cls: type, path: list[str]) -> list[str] | None:
    """The keys of the config class found at `path` below `cls`."""
    for part in path:
        f = getattr(cls, "__pydantic_fields__", {}).get(part)
        if f is None:
            return None
        candidates = [f.annotation, *get_args(f.annotation)]
        cls = next((c for c in candidates if hasattr(c, "__pydantic_fields__")), None)
        if cls is None:
            return None
    return sorted(getattr(cls, "__pydantic_fields__", {})) or None


def merge(base: Mapping[str, Any], over: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """`over` laid onto `base`, mappings merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping):
            current = out.get(key) or {}
            if not isinstance(current, Mapping):
                raise ConfigError(f"{where}{key}", "must be a mapping")
            out[key] = merge(current, value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """KINO_SECTION__KEY=value -> {section: {key: value}} (values parsed as YAML scalars); deeper
    keys nest: KINO_MODEL__ENHANCER__ENABLED=true -> {model: {enhancer: {enabled: true}}}."""
    out: dict[str, Any] = {}
    for name, raw in (environ if environ is not None else os.environ).items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        *path, key = name[len(ENV_PREFIX):].lower().split("__")
        node: dict[str, Any] = out
        for part in path:
            node = node.setdefault(part, {})
        node[key] = yaml.safe_load(raw) if raw != "" else ""
    return out
