"""Model admission end to end: a live daemon on the real broker takes a flood of distinct
model ids, then a named model and a new model with real traffic: both are watched, their
incidents are detected, and the flood's events are refused by reason, not applied.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.config.policy import Level
from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import fast_rate_window, wait_for
from tests.core.kafka_helpers import create_topic, event, produce

pytestmark = pytest.mark.integration

FLOOD = 100_000
MAX_MODELS = 10_000
LEGIT_EVENTS = 400


def write_config(tmp_path: Path, broker: EmbeddedBroker, topic: str, group: str) -> Path:
    config = {
        "kafka": {
            "bootstrap_servers": broker.bootstrap_servers,
            "topics": [topic],
            "group_id": group,
            "dead_letter_topic": f"{topic}-dlq",
            "review_topic": f"{topic}-review",
            "auto_offset_reset": "earliest",
            "max_poll_records": 2000,
            "broker_timeout_s": 5,
        },
        "http": {"host": "127.0.0.1", "port": free_port()},
        "lifecycle": {"log_format": "text", "grace_period_s": 10},
        "engine": {"max_models": MAX_MODELS},
        "flags": {"type": "flagd_file", "path": str(tmp_path / "flags.json")},
        "models": {
            "default": {
                "mode": "shadow",
                "health": {"for": 0, "cooldown": 0, "recover_after": 0},
                "signals": [
                    {
                        "name": "error_rate",
                        "source": "error",
                        "detector": fast_rate_window(),
                        "thresholds": {"degraded": 0.2},
                    }
                ],
            },
            "fraud": {},  # named: inherits default, always watched
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_a_live_daemon_watches_named_and_new_models_after_a_flood_of_ids(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    topic, group = f"events-{unique}", f"group-{unique}"
    await create_topic(broker.bootstrap_servers, topic, partitions=1)
    await produce(broker.bootstrap_servers, topic, (event(f"req-{i:06d}", i) for i in range(FLOOD)))
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(load_settings(write_config(tmp_path, broker, topic, group)), metrics=metrics)
    get = metrics.registry.get_sample_value
    task = asyncio.create_task(daemon.run())
    try:
        refused_flood = FLOOD - MAX_MODELS
        await wait_for(
            lambda: (
                get("driftwarden_events_refused_total", {"reason": "probation"}) == refused_flood
            ),
            timeout=120,
            what=lambda: f"the flood refused, so far {daemon.status()['refused_events']}",
        )
        assert daemon.applied_events == MAX_MODELS
        assert len(daemon.engine.models) == MAX_MODELS
        # A named model and a new one, both failing half their requests.
        legit = [
            event(model, i, error=i % 2 == 0)
            for i in range(LEGIT_EVENTS)
            for model in ("fraud", "checkout")
        ]
        await produce(broker.bootstrap_servers, topic, legit)

        def degraded(model: str) -> bool:
            monitor = daemon.engine.models.get(model)
            return monitor is not None and monitor.health.level is Level.DEGRADED

        await wait_for(
            lambda: degraded("fraud") and degraded("checkout"),
            timeout=60,
            what="fraud and checkout degraded",
        )
        for model in ("fraud", "checkout"):
            assert (
                get(
                    "driftwarden_health_transitions_total",
                    {"model": model, "from_state": "ok", "to_state": "degraded"},
                )
                == 1
            )
        await wait_for(
            lambda: daemon.applied_events + daemon.engine.dropped_events == FLOOD + len(legit),
            what="every legitimate event applied or refused",
        )
    finally:
        daemon.request_stop("test")
        assert await asyncio.wait_for(task, 30) == 0
    probation = get("driftwarden_events_refused_total", {"reason": "probation"})
    assert probation is not None
    # A batch may end after checkout's first event or two: they wait for probation.
    assert refused_flood <= probation <= refused_flood + 2
    assert get("driftwarden_events_refused_total", {"reason": "model_limit"}) == 0
    assert get("driftwarden_events_applied_total") == FLOOD + len(legit) - probation
    assert get("driftwarden_models_evicted_total") == 1  # checkout took a one-shot id's place
    assert "fraud" in daemon.engine.models and "checkout" in daemon.engine.models
