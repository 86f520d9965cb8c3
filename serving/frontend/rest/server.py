"""Serving the REST app with uvicorn inside the Frontend replica's event loop."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class RestServer:
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        # Bind first (so a busy port fails loudly here), then hand the socket to uvicorn.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=2))
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
        if self._task is not None:
            await self._task
