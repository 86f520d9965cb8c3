"""A figure another Ray process knows, read in the background and handed out at once when asked.

The front doors check a request against a Denoiser replica's token budget (a handle call to a worker node). It
changes with a replica's config or device, not per request, so it is not worth a round trip per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class CachedFigure(Generic[T]):
    """`read()` every `every_seconds` in the background (`refresh_forever`, a task of the replica's loop); `value()`
    is the last figure read (`initial` until the first), kept while a read fails or returns nothing."""

    def __init__(self, read: Callable[[], Awaitable[T | None]], *, every_seconds: float, initial: T) -> None:
        self.read, self.every = read, every_seconds
        self.current: T = initial

    def value(self) -> T:
        return self.current

    async def refresh_forever(self) -> None:
        while True:
            try:
                self.current = await self.read() or self.current
            except Exception as e:  # noqa: BLE001 - keep the last figure while its source is busy or replaced
                log.debug("could not read the figure: %r", e)
            await asyncio.sleep(self.every)
