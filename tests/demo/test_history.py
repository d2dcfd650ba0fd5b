"""The daemon's signal history (monitor/observability/history.py): bounded rings, incidents with their
runbook, "recovering" with the time left, and the status page serving it (also in Chromium)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from monitor.config.settings import load_settings
from monitor.engine.engine import ModelMonitor, describe
from monitor.engine.events import Event
from monitor.http.status_page import HISTORY_PATH, add_routes
from monitor.observability.history import (
    SignalHistory,
    attach_history,
    history_of,
    recovery,
    signal_value,
)
from tests.demo.browser import chromium, require_chromium

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "monitor" / "tools" / "demo_policy.yaml"
RUNBOOK = "https://github.com/driftwarden/driftwarden/blob/main/docs/runbooks/ModelUnhealthy.md"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _events(n: int, *, error: bool) -> list[Event]:
    return [Event(model="search-ranker", error=error, latency_ms=50.0) for _ in range(n)]


def search_ranker() -> ModelMonitor:
    """The demo's search-ranker (for 2 s, cooldown 5 s, recover_after 5 s), fed at once."""
    policy = load_settings(POLICY).policy_for("search-ranker")
    monitor = ModelMonitor.build("search-ranker", policy, now=0.0)
    monitor.defer = False
    return monitor


def incident(monitor: ModelMonitor) -> Iterator[float]:
    """Drive ``monitor`` through an error surge and its recovery; yield at each step."""
    monitor.apply(_events(200, error=True), 0.0)
    for now in (0.0, 1.0, 2.5):  # the breach holds `for` 2 s: critical at 2.5
        monitor.evaluate(now)
        yield now
    monitor.apply(_events(400, error=False), 3.0)
    for now in (3.0, 4.0, 6.0, 8.1):  # healthy from 3.0; back to ok at 8.1
        monitor.evaluate(now)
        yield now


def test_recovery_says_to_which_level_and_how_long_is_left() -> None:
    monitor = search_ranker()
    seen: dict[float, dict[str, Any] | None] = {}
    for now in incident(monitor):
        seen[now] = recovery(monitor, now)
        if now == 2.5:
            assert monitor.health.level.label == "critical"
    assert seen[1.0] is None and seen[2.5] is None  # breaching, not recovering
    # recover_after 5 s from 3.0; the cooldown (5 s from 2.5) ends earlier.
    assert seen[3.0] == {"to": "ok", "left_s": 5.0}
    assert seen[4.0] == {"to": "ok", "left_s": 4.0}
    assert seen[6.0] == {"to": "ok", "left_s": 2.0}
    assert seen[8.1] is None and monitor.health.level.label == "ok"


def test_signal_value_shows_the_threshold_of_the_next_level_up() -> None:
    monitor = search_ranker()
    error_rate = next(s for s in monitor.signals if s.name == "error_rate")
    steps = iter(incident(monitor))
    next(steps)
    value, limit = signal_value(error_rate)
    assert value is not None and value > 0.9 and limit == 0.2  # at critical: its own bound
    latency = next(s for s in monitor.signals if s.name == "latency_p95")
    assert signal_value(latency)[1] == 250


def test_history_keeps_each_signal_and_the_incident_with_its_runbook() -> None:
    clock = Clock()
    history = SignalHistory(points=50, step_s=1.0, wall_clock=clock)
    monitor = search_ranker()
    start = clock.t
    for now in incident(monitor):
        clock.t = start + now
        history.record({"search-ranker": monitor}, now)
    snap = json.loads(json.dumps(history.snapshot(), allow_nan=False))
    model = snap["models"]["search-ranker"]
    ring = model["signals"]["error_rate"]
    assert ring["t"] == [start + t for t in (0.0, 1.0, 2.5, 4.0, 6.0, 8.1)]  # 3.0 shares 2.5's step
    assert ring["level"][:3] == ["critical"] * 3 and ring["level"][-1] == "ok"
    assert ring["v"][0] > 0.9 and ring["v"][-1] < 0.2 and ring["threshold"] == 0.2
    assert model["state"]["level"] == ["ok", "ok", "critical", "critical", "critical", "ok"]
    assert model["recovering"] is None and model["runbook_url"] == RUNBOOK
    assert snap["incidents"] == [
        {"model": "search-ranker", "worst": "critical", "started_at": start + 2.5,
         "ended_at": start + 8.1, "runbook_url": RUNBOOK},
    ]  # fmt: skip


def test_history_is_bounded_and_forgets_a_model_the_engine_dropped() -> None:
    clock = Clock()
    history = SignalHistory(points=4, step_s=0.0, max_models=2, wall_clock=clock)
    monitors = {f"m{i}": search_ranker() for i in range(3)}
    for step in range(100):
        clock.t += 1.0
        history.record(monitors, float(step))
    assert len(history.models) == 2  # max_models
    for kept in history.models.values():
        assert all(len(ring.times) == 4 for ring in kept.signals.values())
        assert len(kept.state.times) == 4
    history.record({"m0": monitors["m0"]}, 100.0)
    assert set(history.models) == {"m0"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"points": 1}, "points must be at least 2"), ({"step_s": -1.0}, "step_s must be"),
     ({"step_s": float("nan")}, "step_s must be"), ({"step_s": float("inf")}, "step_s must be")],
)  # fmt: skip
def test_history_refuses_bad_sizes(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SignalHistory(**kwargs)


class FakeDaemon:
    """What the status page reads from a daemon: its status and (via history_of) history."""

    def __init__(self, monitor: ModelMonitor) -> None:
        self.monitor = monitor

    def status(self) -> dict[str, Any]:
        return {
            "version": "test", "uptime_s": 9.0, "ready": True, "applied_events": 600,
            "models": {"search-ranker": describe(self.monitor)}, "actions": {},
        }  # fmt: skip


def recovering_daemon() -> FakeDaemon:
    """A daemon whose search-ranker is critical, healthy again for 1 s, 4 s from recovery."""
    clock = Clock()
    monitor = search_ranker()
    daemon = FakeDaemon(monitor)
    history = attach_history(daemon, SignalHistory(points=50, step_s=0.5, wall_clock=clock))
    start = clock.t
    for now in incident(monitor):
        clock.t = start + now
        history.record({"search-ranker": monitor}, now)
        if now == 4.0:
            break
    return daemon


async def test_page_embeds_the_history_and_serves_it() -> None:
    daemon = recovering_daemon()
    app = web.Application()
    add_routes(app, daemon)
    async with TestClient(TestServer(app)) as client:
        page = await (await client.get("/")).text()
        response = await client.get(HISTORY_PATH)
        served = await response.json()
    assert response.status == 200
    assert "/*INITIAL_HISTORY*/null" not in page
    assert served == json.loads(json.dumps(history_of(daemon).snapshot()))
    assert served["models"]["search-ranker"]["recovering"] == {"to": "ok", "left_s": 4.0}
    assert len(served["models"]["search-ranker"]["signals"]["error_rate"]["t"]) == 5


async def test_status_page_in_chromium_draws_the_daemon_history_recovering_and_runbooks(
    tmp_path: Path,
) -> None:
    require_chromium()
    daemon = recovering_daemon()
    app = web.Application()
    add_routes(app, daemon)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        # No poll during the load: what is drawn is what the page arrived with.
        url = f"http://127.0.0.1:{port}/?refresh=600000"
        dom = await asyncio.to_thread(chromium, url, tmp_path / "profile", "--dump-dom")
    finally:
        await runner.cleanup()
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    html = dom.stdout.decode()
    assert 'data-model="search-ranker" data-state="critical"' in html
    # Five points of the daemon's history on the first load (the page alone has seen one).
    assert re.search(r'data-signal="error_rate" data-history="5"', html), html[-3000:]
    assert html.count("<polyline") == 2  # search-ranker watches two signals
    assert re.search(r'data-role="recovering">recovering → ok in 4s<', html)
    links = re.findall(r'<a href="([^"]+)"[^>]*data-role="runbook"', html)
    assert links and set(links) == {RUNBOOK}, links  # the model's card and its incident
    assert 'data-incident="search-ranker"' in html and "ongoing" in html
