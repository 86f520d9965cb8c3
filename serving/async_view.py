"""The one way async code calls a blocking store: `AsyncView(store)`.

The stores (jobs, accounts, cameos, artifacts) are plain blocking objects: SQL over a connection
pool, files on disk. The front door and the dispatcher run on an event loop, so every call into a
store goes through this view, which runs it in a worker thread:

    jobs = AsyncView(job_store)
    job = await jobs.get(video_id)         # job_store.get(video_id) in a thread

and `await in_thread(fn, *args)` for a blocking function that is not a store's method.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def in_thread(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    return await asyncio.to_thread(fn, *args, **kwargs)


class AsyncView(Generic[T]):
    def __init__(self, blocking: T) -> None:
        self.blocking = blocking  # the object itself, for callers already off the event loop

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.blocking, name)
        if not callable(method):
            raise AttributeError(f"{type(self.blocking).__name__}.{name} is not a method")

        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await in_thread(method, *args, **kwargs)

        return call
