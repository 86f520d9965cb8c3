"""Serving the REST app with uvicorn inside the Frontend replica's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's own loop wakes every 0.1 s to see whether it should stop, and refreshes its Date header every tenth
    wake: at rest that was the largest share of an idle Frontend's CPU after Ray's own (py-spy: the replica's user
    event loop, woken ten times a second). This one wakes once a second, the header's pace, or at once on `stop`."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stopping = asyncio.Event()

    async def main_loop(self) -> None:
        tick = 0
        while not await self.on_tick(tick):
            tick = (tick + 10) % 864000  # each wake is uvicorn's tenth tick: the Date header is refreshed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=1.0)


class RestServer:
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        # Bind first (so a busy port fails loudly here), then hand the socket to uvicorn.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.server = _Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2))
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name="rest-server")
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raise what stopped it
            await asyncio.sleep(0.01)
        log.info("REST (OpenAI-compatible) listening on port %d", self.port)

    async def stop(self) -> None:
        self.server.should_exit = True
        self.server.stopping.set()
        if self._task is not None:
            await self._task
