"""The live status page at ``/``: one static HTML file (package data, no build step) that
polls ``/status`` and ``/status/history`` and draws each model's state (and whether it is
recovering), signals with the daemon's recent history as sparklines, incidents with their
runbook, flags and actions.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from monitor.observability.history import history_of

__all__ = ["CONTENT_SECURITY_POLICY", "HISTORY_PATH", "add_routes", "page_html"]

log = logging.getLogger(__name__)

#: The page is self-contained: it may talk to its own origin and load nothing else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_INITIAL_MARK = "/*INITIAL_STATUS*/null"
_HISTORY_MARK = "/*INITIAL_HISTORY*/null"
HISTORY_PATH = "/status/history"


class _Status(Protocol):
    def status(self) -> dict[str, Any]: ...


def page_html() -> str:
    """The page's HTML, read from the package."""
    return resources.files("monitor.http").joinpath("static/status.html").read_text("utf-8")


def _script_json(data: Any) -> str:
    """JSON that is safe inside a ``<script>`` element.

    >>> _script_json({"why": "</script><b>"})
    '{"why": "\\\\u003c/script>\\\\u003cb>"}'
    """
    text = json.dumps(data, default=str, allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def add_routes(app: web.Application, daemon: _Status | None = None) -> None:
    """Serve the status page at ``/`` of ``app``; a no-op when ``/`` is already served.

    With ``daemon``, the page arrives with the current status and the daemon's recent signal
    history embedded, so it shows the models and what led here before its first poll; the
    history is also served at ``/status/history``.
    """
    if any(resource.canonical == "/" for resource in app.router.resources()):
        return
    template = page_html()

    async def index(request: web.Request) -> web.Response:
        body = template
        if daemon is not None:
            try:
                initial = _script_json(daemon.status())
            except ValueError:
                # A non-finite number slipped into the status: let the page poll instead.
                log.debug("status page: initial status not serialisable", exc_info=True)
            else:
                body = template.replace(_INITIAL_MARK, initial, 1)
            body = body.replace(_HISTORY_MARK, _history_json(daemon), 1)
        return web.Response(
            text=body,
            content_type="text/html",
            headers={
                "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )

    app.router.add_get("/", index)
    if daemon is not None:

        async def history(request: web.Request) -> web.Response:
            return web.Response(
                text=_history_json(daemon),
                content_type="application/json",
                headers={"Cache-Control": "no-store"},
            )

        app.router.add_get(HISTORY_PATH, history)


def _history_json(daemon: _Status) -> str:
    try:
        return _script_json(history_of(daemon).snapshot())
    except ValueError:
        log.debug("status page: history not serialisable", exc_info=True)
        return "null"
