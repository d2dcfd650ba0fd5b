"""The status page shows auto coverage: a model still discovering says so, and each signal
says on hover where it comes from (discovered, named, overridden) and why."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from monitor.config.policy import ModelPolicy
from monitor.engine.engine import Engine, describe
from monitor.engine.events import Event
from monitor.http.status_page import add_routes
from tests.demo.browser import chromium, require_chromium


class FakeDaemon:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def status(self) -> dict[str, Any]:
        return {
            "version": "0",
            "uptime_s": 1.0,
            "ready": True,
            "applied_events": 0,
            "models": {m: describe(monitor) for m, monitor in self.engine.models.items()},
            "actions": {"recent": []},
        }


def events(model: str, n: int) -> list[Event]:
    return [
        msgspec.convert({"model": model, "latency_ms": 10.0 + i % 7, "error": i % 50 == 0}, Event)
        for i in range(n)
    ]


async def test_status_page_in_chromium_shows_discovery_and_why_each_signal(
    tmp_path: Path,
) -> None:
    require_chromium()
    named = ModelPolicy.model_validate(
        {"auto": {"enabled": True}, "signals": [{"name": "error", "source": "error"}]}
    )
    engine = Engine(lambda model: named, max_models=10)
    engine.apply(events("watching", 300), 1.0)
    engine.apply(events("young", 40), 1.0)
    app = web.Application()
    add_routes(app, FakeDaemon(engine))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/?refresh=600000"
        dom = await asyncio.to_thread(chromium, url, tmp_path / "profile", "--dump-dom")
    finally:
        await runner.cleanup()
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    html = dom.stdout.decode()
    assert "discovering its signals: 40/200 events" in html
    # Only the young model (the page's script spells the text with placeholders).
    assert len(re.findall(r"discovering its signals: \d+/\d+ events", html)) == 1
    assert (
        "<td title=\"discovered: latency_ms in 200/200 events: p99 against the model's own "
        'baseline" data-origin="discovered">latency_ms</td>'
    ) in html
    assert 'title="overridden: named in the policy, over: error rate' in html
    assert 'title="named: named in the policy" data-origin="named">error</td>' in html
