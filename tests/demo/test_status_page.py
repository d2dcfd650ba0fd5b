"""The status page served at / : self-contained HTML, the status embedded safely, idempotent."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from monitor.http.status_page import CONTENT_SECURITY_POLICY, add_routes, page_html


class FakeDaemon:
    def __init__(self, status: dict[str, Any]) -> None:
        self._status = status

    def status(self) -> dict[str, Any]:
        return self._status


STATUS = {
    "version": "0.1.0",
    "uptime_s": 12.0,
    "ready": True,
    "applied_events": 42,
    "models": {
        "fraud-scorer": {"state": "degraded", "mode": "enforce", "events": 42, "signals": {}}
    },
    "actions": {"recent": [{"kind": "transition", "why": "</script><script>alert(1)</script>"}]},
}


async def _get(app: web.Application, path: str) -> tuple[int, dict[str, str], str]:
    async with TestClient(TestServer(app)) as client:
        response = await client.get(path)
        return response.status, dict(response.headers), await response.text()


async def test_root_serves_the_page_with_the_current_status_embedded() -> None:
    app = web.Application()
    add_routes(app, FakeDaemon(STATUS))
    status, headers, body = await _get(app, "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert '"fraud-scorer": {"state": "degraded"' in body
    assert "/*INITIAL_STATUS*/null" not in body


async def test_embedded_status_cannot_close_the_script_element() -> None:
    app = web.Application()
    add_routes(app, FakeDaemon(STATUS))
    _, _, body = await _get(app, "/")
    # The only </script> is the page's own.
    assert body.count("</script>") == 1
    assert "\\u003c/script>\\u003cscript>alert(1)" in body


async def test_page_without_a_daemon_polls_status_instead() -> None:
    app = web.Application()
    add_routes(app)
    _, _, body = await _get(app, "/")
    assert "const INITIAL = /*INITIAL_STATUS*/null;" in body


def test_mounting_twice_keeps_one_route() -> None:
    app = web.Application()
    add_routes(app, FakeDaemon(STATUS))
    add_routes(app, FakeDaemon(STATUS))
    assert [r.canonical for r in app.router.resources()] == ["/", "/status/history"]


def test_page_loads_nothing_from_elsewhere() -> None:
    html = page_html()
    urls = set(re.findall(r"https?://[^\s\"'`)]+", html))
    # The SVG namespace is an identifier, never fetched.
    assert urls == {"http://www.w3.org/2000/svg"}
    assert not re.search(r"<(link|img|iframe)\b", html)
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert "innerHTML" not in html  # status text is inserted as text, never parsed as HTML
