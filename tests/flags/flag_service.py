"""A small real HTTP flag service (aiohttp) that the generic HTTP backend writes to.

It checks the auth header and body of every write, and can be switched to answer 503.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from monitor.flags.base import FlagValue


@dataclass
class FlagService:
    token: str
    flags: dict[str, FlagValue] = field(default_factory=dict)
    writes: list[dict[str, Any]] = field(default_factory=list)
    failing_status: int | None = None
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_put("/v1/flags/{flag}", self._put)
        app.router.add_get("/v1/flags/{flag}", self._get)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _refusal(self, request: web.Request) -> web.Response | None:
        if self.failing_status is not None:
            return web.Response(status=self.failing_status, text="switched off by the test")
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401, text="bad token")
        return None

    async def _put(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        raw = await request.text()
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return web.Response(status=400, text=f"not JSON: {raw!r}")
        flag = request.match_info["flag"]
        if not isinstance(body, dict) or body.get("key") != flag or "value" not in body:
            return web.Response(status=400, text=f"body does not name {flag!r}: {raw!r}")
        self.writes.append({"flag": flag, "body": body, "content_type": request.content_type})
        self.flags[flag] = body["value"]
        return web.json_response({"ok": True})

    async def _get(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        flag = request.match_info["flag"]
        if flag not in self.flags:
            return web.Response(status=404)
        return web.json_response({"data": {"value": self.flags[flag]}})
