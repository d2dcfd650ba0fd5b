"""The daemon in-process on the real broker for the operator tests: steady traffic with a
settable error rate, a short-timed error-rate policy, and an HTTP client on the daemon's port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client import CollectorRegistry

from monitor.config.settings import Settings, load_settings
from monitor.daemon.daemon import Daemon
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker
from monitor.tools.traffic import ErrorEvents, TrafficGenerator
from tests.conftest import fast_rate_window, kafka_section, wait_for
from tests.core.kafka_helpers import create_topic, read_all

#: Short health timings so that an incident and its recovery take a few seconds.
FOR_S, COOLDOWN_S, RECOVER_S = 0.5, 1.0, 1.5
THRESHOLD = 0.2
RUNBOOK = "https://runbooks.example/ModelUnhealthy"


class Traffic(TrafficGenerator):
    """One model's events at a steady rate from the shared generator; ``error_probability`` is
    settable mid-run.

    Each event has a ``prediction`` and a uniform ``confidence``; ``sent`` maps the request ids
    the broker acknowledged to their confidence, so tests can check what was sampled for review.
    """

    def __init__(self, bootstrap: str, topic: str, model: str, rate: float = 400.0) -> None:
        self.events = ErrorEvents(scored=True)
        self.sent: dict[str, float] = {}
        super().__init__(
            bootstrap,
            topic,
            rate_per_model=rate,
            models=(model,),
            script=(),
            seed=11,
            make=self.events,
            observe=self._keep,
            linger_ms=5,
            client_id=f"traffic-{model}",
        )

    @property
    def error_probability(self) -> float:
        return self.events.error_rate

    @error_probability.setter
    def error_probability(self, rate: float) -> None:
        self.events.error_rate = rate

    def _keep(self, body: dict[str, Any]) -> None:
        self.sent[body["request_id"]] = body["confidence"]


def error_rate_signal() -> dict[str, Any]:
    return {
        "name": "error_rate",
        "source": "error",
        "detector": fast_rate_window(),
        "thresholds": {"degraded": THRESHOLD},
    }


def write_settings(
    tmp_path: Path,
    broker: EmbeddedBroker,
    topic: str,
    *,
    flags: dict[str, Any] | None = None,
    sinks: list[dict[str, Any]] | None = None,
    degraded: dict[str, Any] | None = None,
    signals: list[dict[str, Any]] | None = None,
    named_models: tuple[str, ...] = (),
) -> Settings:
    """Settings of one daemon on ``topic`` with the short-timed error-rate policy.

    ``named_models`` get a policy entry of their own (the default's), so that the operator
    API knows them before their first event.
    """
    config: dict[str, Any] = {
        "kafka": kafka_section(broker.bootstrap_servers, topic),
        "http": {"host": "127.0.0.1", "port": 0},
        "lifecycle": {"log_format": "text", "grace_period_s": 10},
        "flags": flags,
        "alerts": {"sinks": sinks if sinks is not None else [{"type": "console"}]},
        "actions": {"audit_log": str(tmp_path / "audit.jsonl")},
        "models": {
            "default": {
                "mode": "enforce",
                "health": {"for": FOR_S, "cooldown": COOLDOWN_S, "recover_after": RECOVER_S},
                "signals": signals if signals is not None else [error_rate_signal()],
                "actions": {
                    "degraded": degraded
                    if degraded is not None
                    else {"alert": {"severity": "page"}}
                },
                "runbook_url": RUNBOOK,
            },
            **{name: {} for name in named_models},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_settings(path)


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@dataclass
class Running:
    daemon: Daemon
    metrics: Metrics
    http: aiohttp.ClientSession
    base_url: str

    def level(self, model: str) -> str:
        monitor = self.daemon.engine.models.get(model)
        return monitor.health.level.label if monitor is not None else "unknown"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


@contextlib.asynccontextmanager
async def running(settings: Settings, topic: str) -> AsyncIterator[Running]:
    """Create ``topic``, run a daemon over it, yield it with an HTTP client; stop it cleanly."""
    await create_topic(settings.kafka.bootstrap_servers, topic, partitions=1)
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(settings, metrics=metrics)
    task = asyncio.create_task(daemon.run(), name="daemon")
    try:
        await wait_for(
            lambda: daemon.http.bound_port is not None or task.done(), timeout=10, what="HTTP up"
        )
        assert not task.done(), "the daemon exited at start"
        base_url = f"http://127.0.0.1:{daemon.http.bound_port}"
        async with aiohttp.ClientSession() as http:
            yield Running(daemon, metrics, http, base_url)
    finally:
        daemon.request_stop("test over")
        assert await asyncio.wait_for(task, 30) == 0


async def incident(run: Running, traffic: Traffic, model: str) -> None:
    """Drive ``model`` from ok to degraded through its error rate."""
    await wait_for(
        lambda: run.level(model) == "ok" and run.daemon.engine.models[model].events >= 200,
        timeout=15,
        what=f"{model} healthy with traffic",
    )
    traffic.error_probability = 0.6
    await wait_for(lambda: run.level(model) == "degraded", timeout=15, what=f"{model} degraded")


async def recovery(run: Running, traffic: Traffic, model: str) -> None:
    traffic.error_probability = 0.0
    await wait_for(lambda: run.level(model) == "ok", timeout=15, what=f"{model} recovered")


async def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 10.0) -> list[Any]:
    """Every record of ``topic`` from the start, once at least ``expected`` arrived, plus
    anything beyond them that is already there."""
    return await read_all(bootstrap, topic, expected, timeout=timeout, drain_ms=300)
