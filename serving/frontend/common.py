"""What both protocol adapters share: reading the API key off a call. Everything else they share is
the domain itself (sizes come from `GenerationParams.size`, page limits from `serving.videos.parsing`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def api_key(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> str | None:
    """The key of `authorization: Bearer <key>`, else `x-api-key` (gRPC metadata or HTTP headers)."""
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    md = {k.lower(): v for k, v in pairs}
    auth = md.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return md.get("x-api-key") or None
