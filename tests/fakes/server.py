"""A local aiohttp server on 127.0.0.1 at a free port, the base of every fake and receiver.

The access log is off: tests assert on every captured log record, and a path can be a secret.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Self

from aiohttp import web

__all__ = ["LocalServer", "serving"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LocalServer:
    """Serve the routes ``add_routes`` adds; ``port`` is known once started (0 picks one)."""

    port: int = 0
    _runner: web.AppRunner | None = None

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class _OneRoute(LocalServer):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.*}", self.handler)


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """Answer every POST with ``handler``; yield the server's base URL."""
    async with _OneRoute(handler) as server:
        yield server.base_url
