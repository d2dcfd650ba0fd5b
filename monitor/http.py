"""The HTTP side of the daemon: /metrics, /healthz, /readyz, /status (read-only, no auth).

The operator API and the rollout gate are mounted on the same server by ``monitor.operator``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.metrics import Metrics

__all__ = ["HttpServer", "LoopHeartbeat", "StatusProvider"]

log = logging.getLogger(__name__)


class StatusProvider(Protocol):
    def health_problems(self) -> list[str]: ...

    def readiness_problems(self) -> list[str]: ...

    def status(self) -> dict[str, Any]: ...


class LoopHeartbeat:
    """Measures event-loop lag: a task that should wake every ``interval_s``."""

    def __init__(self, metrics: Metrics, interval_s: float = 0.5) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self.last_beat = time.monotonic()
        self.lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self.last_beat = time.monotonic()
            self._task = asyncio.create_task(self._run(), name="loop-heartbeat")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def current_lag(self) -> float:
        return max(self.lag_s, time.monotonic() - self.last_beat - self.interval_s)

    async def _run(self) -> None:
        while True:
            expected = time.monotonic() + self.interval_s
            await asyncio.sleep(self.interval_s)
            now = time.monotonic()
            self.lag_s = max(0.0, now - expected)
            self.last_beat = now
            self.metrics.loop_lag.set(self.lag_s)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, default=str, allow_nan=False),
        status=status,
        content_type="application/json",
    )


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        provider: StatusProvider,
        *,
        extra_routes: Callable[[web.Application], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.provider = provider
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/metrics", self._metrics),
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
                web.get("/status", self._status),
            ]
        )
        if extra_routes is not None:
            extra_routes(self.app)
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        sockets = getattr(site._server, "sockets", None) or []
        self.bound_port = int(sockets[0].getsockname()[1]) if sockets else self.port
        log.info("HTTP listening on %s:%s", self.host, self.bound_port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        problems = self.provider.health_problems()
        return _json({"ok": not problems, "problems": problems}, 503 if problems else 200)

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = self.provider.readiness_problems()
        return _json({"ready": not problems, "problems": problems}, 503 if problems else 200)

    async def _status(self, request: web.Request) -> web.Response:
        return _json(self.provider.status())
