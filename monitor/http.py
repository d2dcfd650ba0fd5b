"""The HTTP side of the daemon: /metrics, /healthz, /readyz, /status (read-only, no auth).

The operator API and the rollout gate are mounted on the same server by ``monitor.operator``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitor.metrics import Metrics

__all__ = ["Exposition", "HttpServer", "LoopHeartbeat", "StatusProvider"]

log = logging.getLogger(__name__)

_METRICS_CHUNK_BYTES = 256 * 1024
_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = True


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


def _render_without_gc(registry: CollectorRegistry) -> bytes:
    """``generate_latest`` with the cyclic collector paused.

    The render holds each metric's samples at once (hundreds of thousands of small tuples
    and dicts): with the collector on they survive young collections and trigger a full
    one, which walks every detector of every model while holding the GIL (0.87 s at 10,000
    models, measured), stalling the event loop. Paused, they are freed by reference counting
    when the render ends and nothing is promoted; cyclic garbage of other threads waits
    for the render (a few seconds at most).
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:  # renders of several servers in one process (tests) may overlap
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        return generate_latest(registry)
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


class Exposition:
    """Renders a registry's /metrics text in a worker thread, one render at a time.

    With 10,000 models the text has hundreds of thousands of series and takes seconds to
    render (measured: tests/core/test_metrics_render.py); on the event loop that would
    stall consumption and /healthz for as long. In a thread the loop keeps running: it
    waits at most the interpreter's switch interval (5 ms) for the GIL. prometheus_client
    copies each metric's children under its lock, so the loop may add and remove series
    meanwhile. Scrapes that arrive while a render runs share it, so the cost does not
    grow with the number of scrapers.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._rendering: asyncio.Future[bytes] | None = None

    async def render(self) -> bytes:
        rendering = self._rendering
        if rendering is None:
            rendering = self._rendering = asyncio.ensure_future(
                asyncio.to_thread(_render_without_gc, self.registry)
            )
            rendering.add_done_callback(self._done)
        # Shielded: a scraper that hangs up does not cancel the render others wait for.
        return await asyncio.shield(rendering)

    def _done(self, rendering: asyncio.Future[bytes]) -> None:
        if self._rendering is rendering:
            self._rendering = None
        if not rendering.cancelled() and rendering.exception() is not None:
            log.error("rendering /metrics failed: %r", rendering.exception())


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
        self._exposition = Exposition(metrics.registry)
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

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        body = await self._exposition.render()
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE_LATEST})
        response.content_length = len(body)
        await response.prepare(request)
        # In slices, each awaited: one write of tens of MB would copy it all into the
        # transport's buffer in one step of the loop.
        view = memoryview(body)
        for start in range(0, len(body), _METRICS_CHUNK_BYTES):
            await response.write(view[start : start + _METRICS_CHUNK_BYTES])
        await response.write_eof()
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        problems = self.provider.health_problems()
        return _json({"ok": not problems, "problems": problems}, 503 if problems else 200)

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = self.provider.readiness_problems()
        return _json({"ready": not problems, "problems": problems}, 503 if problems else 200)

    async def _status(self, request: web.Request) -> web.Response:
        return _json(self.provider.status())
