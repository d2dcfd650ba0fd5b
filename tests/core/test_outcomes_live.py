"""Delayed outcomes through the daemon on a real broker: predictions, a restart, then their
outcomes (a label and no prediction) joined from the checkpoint, and the label signal
breaches on what only the outcomes show.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.config.policy import Level
from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import fast_rate_window, wait_for
from tests.core.kafka_helpers import create_topic, produce

pytestmark = pytest.mark.integration

PREDICTIONS = 1_000


def _config(tmp_path: Path, broker: EmbeddedBroker, topic: str, group: str, backend: str) -> Path:
    config: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": broker.bootstrap_servers,
            "topics": [topic],
            "group_id": group,
            "dead_letter_topic": f"{topic}-dlq",
            "auto_offset_reset": "earliest",
            "max_poll_records": 200,
            "broker_timeout_s": 5,
        },
        "http": {"host": "127.0.0.1", "port": free_port()},
        "lifecycle": {"log_format": "text", "grace_period_s": 10},
        "state": {
            "backend": backend,
            "path": str(tmp_path / "state"),
            "topic": f"{topic}-state",
            "interval_s": 0.5,
        },
        "actions": {"audit_log": str(tmp_path / "audit.jsonl")},
        "models": {
            "fraud": {
                "mode": "shadow",
                "health": {"for": 0, "cooldown": 0},
                "outcomes": {"horizon": "1h"},
                "signals": [
                    {
                        "source": "label_error",
                        "detector": fast_rate_window(),
                        "thresholds": {"degraded": 0.2},
                    }
                ],
            }
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _record(body: dict[str, Any]) -> tuple[bytes, bytes]:
    return b"fraud", json.dumps(body).encode()


async def _run_until(daemon: Daemon, done: Any, what: str) -> None:
    task = asyncio.create_task(daemon.run())

    def described() -> str:
        models = daemon.engine.snapshot()
        return f"{what}; applied {daemon.applied_events}: {json.dumps(models, default=str)[:3000]}"

    try:
        await wait_for(done, timeout=60, what=described)
    finally:
        daemon.request_stop("test")
        assert await asyncio.wait_for(task, 30) == 0


@pytest.mark.parametrize("backend", ["file", "kafka"])
async def test_outcomes_after_a_restart_join_the_predictions_before_it_and_breach(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, backend: str
) -> None:
    """``kafka``: the compacted checkpoint topic through which a rebalance hands a model to
    another replica; ``file``: a single instance's restart."""
    topic, group = f"outcomes-{unique}", f"group-{unique}"
    await create_topic(broker.bootstrap_servers, topic, partitions=1)
    rng = np.random.default_rng(7)
    truth = ["fraud" if rng.random() < 0.3 else "ok" for _ in range(PREDICTIONS)]
    await produce(
        broker.bootstrap_servers,
        topic,
        (
            _record({"model": "fraud", "request_id": f"req-{i}", "prediction": y})
            for i, y in enumerate(truth)
        ),
    )
    config = _config(tmp_path, broker, topic, group, backend)

    first = Daemon(load_settings(config), metrics=Metrics.create(CollectorRegistry()))
    await _run_until(first, lambda: first.applied_events >= PREDICTIONS, "the predictions")
    assert first.engine.models["fraud"].outcomes is not None

    # The world changed; only the outcomes say so: 35% of the predictions were wrong.
    wrong = rng.random(PREDICTIONS) < 0.35
    labels = [
        ("ok" if y == "fraud" else "fraud") if flip else y
        for y, flip in zip(truth, wrong, strict=True)
    ]
    await produce(
        broker.bootstrap_servers,
        topic,
        [_record({"model": "fraud", "request_id": "never-predicted", "label": "ok"})]
        + [
            _record({"model": "fraud", "request_id": f"req-{i}", "label": label})
            for i, label in enumerate(labels)
        ],
    )
    metrics = Metrics.create(CollectorRegistry())
    second = Daemon(load_settings(config), metrics=metrics)

    def joined() -> float:
        value = metrics.registry.get_sample_value(
            "driftwarden_outcomes_total", {"model": "fraud", "result": "joined"}
        )
        return value or 0.0

    def degraded() -> bool:
        monitor = second.engine.models.get("fraud")
        return monitor is not None and monitor.health.level is Level.DEGRADED

    await _run_until(
        second,
        lambda: joined() == PREDICTIONS and degraded(),
        "every outcome joined and the label signal degraded",
    )
    status = second.status()["models"]["fraud"]
    assert status["outcomes"]["outcomes"] == {
        "joined": PREDICTIONS,
        "late": 0,
        "unmatched": 1,
        "duplicate": 0,
    }
    assert status["outcomes"]["pending"] == 0
    realized = status["outcomes"]["accuracy"]["realized"]
    assert realized["n"] == PREDICTIONS
    assert realized["mean"] == pytest.approx(1 - wrong.mean())
    assert status["signals"]["label_error"]["level"] == "degraded"
