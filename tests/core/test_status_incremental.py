"""/status kept per model: the JSON built from each model's kept text equals today's
``json.dumps(engine.snapshot())`` through discovery, drift, outcomes, the clock's tick, a model
restored in place of another and models that leave; only the models that changed are rebuilt;
the daemon serves the same /status as its ``status()``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from monitor.config.policy import ModelPolicy
from monitor.config.settings import EngineSettings, HttpSettings, Settings
from monitor.daemon.daemon import Daemon
from monitor.engine.engine import Engine, ModelMonitor
from monitor.engine.events import Event
from monitor.flags.config import FlagdFileSpec
from monitor.observability.metrics import Metrics
from monitor.observability.model_status import ModelStatus

#: The auto policy a user runs (discovery first), with a short discovery, a fast health
#: machine and an outcome join.
POLICY = ModelPolicy.model_validate(
    {
        "auto": {"discover_events": 40},
        "health": {"for": 0, "recover_after": 0, "cooldown": 0},
        "signals": [
            {
                "name": "error_rate",
                "source": "error",
                "detector": {"type": "rate_window", "window": 20, "min_samples": 10, "stride": 5},
                "thresholds": {"warn": 0.1, "degraded": 0.2},
            },
            {"source": "label_error"},
        ],
    }
)

MODELS = ["fraud", 'quo"te', "ünï", "churn", "search"]


def expected(engine: Engine) -> Any:
    """/status's models as today: every model described and encoded on each request."""
    return json.loads(json.dumps(engine.snapshot(), default=str, allow_nan=False))


def events(model: str, n: int, rng: random.Random, *, shifted: bool = False) -> list[Event]:
    return [
        Event(
            model=model,
            model_version="v2" if shifted else "v1",
            request_id=f"{model}-{rng.random()}",
            prediction=rng.random(),
            latency_ms=rng.gauss(80.0 if shifted else 20.0, 3.0),
            error=rng.random() < (0.5 if shifted else 0.02),
            features={"amount": rng.gauss(5.0 if shifted else 0.0, 1.0), "kind": "a"},
        )
        for _ in range(n)
    ]


def outcomes(batch: list[Event], rng: random.Random) -> list[Event]:
    return [
        Event(model=e.model, request_id=e.request_id, label=float(rng.random() < 0.5))
        for e in batch
        if e.request_id is not None
    ]


def test_kept_status_equals_todays_through_changes_and_rebuilds_only_what_changed() -> None:
    rng = random.Random(11)
    engine = Engine(lambda model: POLICY, max_models=100)
    status = ModelStatus(engine.models)
    now = 100.0

    def check() -> int:
        assert json.loads(status.json()) == expected(engine)
        return status.rebuilt

    assert check() == 0
    for step in range(12):  # discovery, then every signal filling and testing
        now += 1.0
        batch = [e for model in MODELS for e in events(model, 15, rng)]
        engine.apply(batch, now)
        if step % 3 == 2:
            engine.apply(outcomes(batch[::2], rng), now)
        assert check() == len(MODELS)
    assert all(not m.discovering for m in engine.models.values())
    assert check() == 0  # nothing changed since: nothing rebuilt
    # One model drifts: only it is rebuilt, its level moves.
    for _ in range(3):
        now += 1.0
        engine.apply(events("fraud", 30, rng, shifted=True), now)
        assert check() == 1
    assert json.loads(status.json())["fraud"]["state"] != "ok"
    # The clock alone (flush, recovery, no-data): whatever it changes is shown.
    for _ in range(3):
        now += 5.0
        engine.tick(now)
        check()
    # Outcomes of one model only.
    now += 1.0
    engine.apply(outcomes(events("churn", 5, rng), rng), now)
    check()
    # A model restored in place of another monitor under the same name.
    engine.drop("search")
    restored = ModelMonitor.build("search", POLICY, now)
    assert engine.adopt("search", restored)
    assert check() == 1
    # Models leaving.
    engine.drop(MODELS[1])
    engine.drop(MODELS[2])
    assert check() == 0
    assert set(json.loads(status.json())) == set(engine.models)


async def test_the_daemon_serves_the_status_it_describes(tmp_path: Path) -> None:
    settings = Settings(
        engine=EngineSettings(max_models=50),
        http=HttpSettings(host="127.0.0.1", port=0),
        flags=FlagdFileSpec(path=tmp_path / "flags.json"),
        models={"default": POLICY},
    )
    daemon = Daemon(settings, metrics=Metrics.create(CollectorRegistry()))
    rng = random.Random(5)
    daemon.engine.apply([e for m in MODELS for e in events(m, 60, rng)], time.time())
    await daemon.http.start()
    try:
        port = daemon.http.bound_port
        async with aiohttp.ClientSession() as session:
            for rebuilt in (len(MODELS), 0):  # built, then kept
                async with session.get(f"http://127.0.0.1:{port}/status") as response:
                    assert response.status == 200
                    assert response.content_type == "application/json"
                    served = await response.json()
                assert daemon.model_status.rebuilt == rebuilt
                today = json.loads(json.dumps(daemon.status(), default=str, allow_nan=False))
                assert served.keys() == today.keys()
                served.pop("uptime_s"), today.pop("uptime_s")
                assert served == today
                assert set(served["models"]) == set(MODELS)
    finally:
        await daemon.http.stop()
