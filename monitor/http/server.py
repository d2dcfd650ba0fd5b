"""The HTTP side of the daemon: /metrics, /healthz, /readyz, /status (read-only, no auth).

The operator API and the rollout gate are mounted on the same server by ``monitor.http.operator``.
This module also owns what every request gets whatever its route: a bounded body, JSON error
answers (a malformed request is a 4xx ``{"error": ...}``, never a 500 or an echo of its bytes)
and access and error logs with the ``Authorization`` header and any registered secret redacted.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitor.observability.metrics import Metrics

__all__ = [
    "ACCESS_LOG_FORMAT",
    "LOG_REDACTOR",
    "MAX_REQUEST_BODY_BYTES",
    "Exposition",
    "HttpServer",
    "LogRedactor",
    "LoopHeartbeat",
    "StatusProvider",
]

log = logging.getLogger(__name__)

_METRICS_CHUNK_BYTES = 256 * 1024
_Rendered = TypeVar("_Rendered")
_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = True

#: Largest request body any route reads; a longer one is answered 413 before it is parsed.
MAX_REQUEST_BODY_BYTES = 64 * 1024

#: The access log (logger ``aiohttp.access``, at INFO): client, request line, status, size,
#: seconds. No header is in it; a format that adds one still has Authorization redacted.
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tf'

#: Loggers whose records can carry request bytes (headers, request lines) and are redacted.
REDACTED_LOGGERS = (
    "aiohttp.access",
    "aiohttp.server",
    "aiohttp.web",
    __name__,
    "monitor.http.operator",
)

REDACTED = "<redacted>"

#: Header names whose values never reach a log record.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})

#: An Authorization header (in an aiohttp parser message, a repr, a log line) and its value,
#: and a bearer credential on its own. The value stops at a quote, comma or whitespace after
#: the scheme, which is how reprs and header dumps end it.
_AUTH_VALUE = re.compile(
    r"(?i)((?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)(?:[a-z]+\s+)?[^\s'\",;}]+"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\",;}]+")

_RESERVED_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}


class LogRedactor(logging.Filter):
    """A logging filter that removes credentials from records before any handler sees them.

    It rewrites the message (after merging its arguments), string ``extra`` fields (the access
    logger puts header values there) and, when they hold a credential, the formatted exception.
    Secrets registered with :meth:`add_secret` (the operator token) are removed wherever they
    appear; ``Authorization`` values and bearer credentials are removed by pattern.

    >>> redactor = LogRedactor()
    >>> redactor.add_secret("s3cret")
    >>> redactor.redact("b'Authorization: Bearer abc' then s3cret, then bearer xyz")
    "b'Authorization: <redacted>' then <redacted>, then bearer <redacted>"
    """

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add_secret(self, secret: str) -> None:
        secret = secret.strip()
        if secret:
            self._secrets.add(secret)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _AUTH_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
        return _BEARER.sub(lambda m: m.group(1) + REDACTED, text)

    def _redact_value(self, key: str, value: Any) -> Any:
        if key.lower() in _SECRET_HEADERS:
            return REDACTED
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {str(k): self._redact_value(str(k), v) for k, v in value.items()}
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: keep only its format string
            message = str(record.msg)
        record.msg, record.args = self.redact(message), None
        for key, value in list(record.__dict__.items()):
            if key not in _RESERVED_RECORD_KEYS and not key.startswith("_"):
                record.__dict__[key] = self._redact_value(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            redacted = self.redact(text)
            if redacted != text:
                # The exception object itself holds the secret: keep only the redacted text.
                record.exc_info, record.exc_text = None, redacted
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


LOG_REDACTOR = web.AppKey("log_redactor", LogRedactor)


#: Where aiohttp starts quoting the request's bytes in a message: ``b'...'`` or ``'...'``
#: after a space (an apostrophe inside a word, as in "can't", is text).
_QUOTED_BYTES = re.compile(r"(?:^|\s)b?['\"]")


def _client_reason(message: str | None, status: int) -> str:
    """What a client is told of a request the HTTP parser refused: the first line of
    aiohttp's message, cut before any quoted request bytes (which aiohttp echoes)."""
    first = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    first = _QUOTED_BYTES.split(first, maxsplit=1)[0].rstrip(" :")[:120]
    return first or ("bad request" if status < 500 else "internal error")


class _JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering errors raised before any route (a malformed
    request line or header) as JSON, without echoing the request's bytes in the answer or
    the log (aiohttp's own answer and log line quote the offending header, token and all)."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        reason = _client_reason(message, status)
        if status >= 500:
            log.error("HTTP error handling a request from %s", request.remote, exc_info=exc)
        else:
            log.warning("HTTP %d to %s: malformed request: %s", status, request.remote, reason)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started, cannot send the error")
        response = _json({"error": reason if status < 500 else "internal error"}, status)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class _JsonErrorAppRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp has no hook for the connection handler's class; the subclass only overrides
        # handle_error and adds no state, so re-classing the built server is safe.
        server.__class__ = _JsonErrorServer
        return server


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every route's errors as JSON ``{"error": ...}``; an unexpected exception is a logged
    500 whose answer says nothing of it."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as err:
        if err.status < 400 or err.content_type == "application/json":
            raise
        text = err.text or ""
        default = f"{err.status}: {err.reason}"
        message = err.reason if not text or text == default else text
        answer = _json({"error": message}, err.status)
        for name, value in err.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                answer.headers[name] = value
        return answer
    except Exception:
        log.exception("unhandled error on %s %r", request.method, request.raw_path[:200])
        return _json({"error": "internal error"}, 500)
    return response


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


def _without_gc(render: Callable[..., _Rendered], *args: Any) -> _Rendered:
    """``render(*args)`` (``generate_latest``, the per-model text) with the cyclic collector
    paused.

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
        return render(*args)
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


class Exposition:
    """Renders a registry's /metrics text in a worker thread, one render at a time.

    With ``metrics`` whose publisher renders the per-model gauges
    (``Metrics.model_series``), those families come from its per-model text (kept, and
    rendered again only for the models whose series changed since the last scrape) and only
    the rest of the registry (``Metrics.core``: counters, per-partition series) goes through
    prometheus_client: a scrape no longer walks every series.

    With 10,000 models the text has hundreds of thousands of series and takes seconds to
    render (measured: tests/core/test_metrics_render.py); on the event loop that would
    stall consumption and /healthz for as long. In a thread the loop keeps running: it
    waits at most the interpreter's switch interval (5 ms) for the GIL. prometheus_client
    copies each metric's children under its lock, so the loop may add and remove series
    meanwhile. Scrapes that arrive while a render runs share it, so the cost does not
    grow with the number of scrapers.
    """

    def __init__(self, registry: CollectorRegistry, metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
        self._rendering: asyncio.Future[list[bytes]] | None = None

    def _render(self) -> list[bytes]:
        """The text in pieces, in the worker thread."""
        metrics = self.metrics
        publisher = metrics.model_series if metrics is not None else None
        if metrics is None or publisher is None or metrics.registry is not self.registry:
            return [_without_gc(generate_latest, self.registry)]
        return [_without_gc(generate_latest, metrics.core), *_without_gc(publisher.exposition)]

    async def render(self) -> bytes:
        """The whole text (``render_pieces`` joined)."""
        return b"".join(await self.render_pieces())

    async def render_pieces(self) -> list[bytes]:
        rendering = self._rendering
        if rendering is None:
            rendering = self._rendering = asyncio.ensure_future(asyncio.to_thread(self._render))
            rendering.add_done_callback(self._done)
        # Shielded: a scraper that hangs up does not cancel the render others wait for.
        return await asyncio.shield(rendering)

    def _done(self, rendering: asyncio.Future[list[bytes]]) -> None:
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
        access_log_format: str = ACCESS_LOG_FORMAT,
    ) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.provider = provider
        self._exposition = Exposition(metrics.registry, metrics)
        self.access_log_format = access_log_format
        self.log_redactor = LogRedactor()
        self.app = web.Application(
            client_max_size=MAX_REQUEST_BODY_BYTES, middlewares=[_json_errors]
        )
        self.app[LOG_REDACTOR] = self.log_redactor
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
        for name in REDACTED_LOGGERS:
            logging.getLogger(name).addFilter(self.log_redactor)
        runner = _JsonErrorAppRunner(
            self.app, access_log_format=self.access_log_format, handle_signals=False
        )
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
            for name in REDACTED_LOGGERS:
                logging.getLogger(name).removeFilter(self.log_redactor)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        pieces = await self._exposition.render_pieces()
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE_LATEST})
        response.content_length = sum(len(piece) for piece in pieces)
        await response.prepare(request)
        # In slices, each awaited: one write of tens of MB would copy it all into the
        # transport's buffer in one step of the loop.
        for body in pieces:
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
        # A provider that keeps its status encoded (the daemon: per model) answers with it.
        encoded = getattr(self.provider, "status_json", None)
        if encoded is None:
            return _json(self.provider.status())
        return web.Response(text=encoded(), content_type="application/json")
