"""Checkpoints: a model's detectors, health and actions survive a round trip through bytes
and a store, a changed detector starts afresh, idle models are deleted, and a restarted
daemon continues an incident without acting again.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from monitor.config.policy import Level, ModelPolicy
from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.engine.engine import ModelMonitor
from monitor.engine.events import Event
from monitor.observability.metrics import Metrics
from monitor.state.checkpoints import DirectoryStore, partition_of, restore_model, snapshot_model
from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import fast_rate_window, wait_for
from tests.core.kafka_helpers import create_topic, produce

POLICY: dict[str, Any] = {
    "mode": "enforce",
    "health": {"for": 0, "cooldown": 0, "recover_after": 30},
    "signals": [
        {
            "name": "error_rate",
            "source": "error",
            "detector": fast_rate_window(),
            "thresholds": {"degraded": 0.3},
        },
        {
            "name": "latency",
            "source": "latency_ms",
            "detector": {
                "type": "ks_window",
                "window": 200,
                "min_samples": 100,
                "stride": 20,
                "persist": 0,
                "reference": {"size": 500},
            },
        },
    ],
}


def events(n: int, start: int, error_rate: float, seed: int) -> list[Event]:
    rng = np.random.default_rng(seed)
    return [
        Event(
            model="fraud",
            request_id=f"r{start + i}",
            error=bool(rng.random() < error_rate),
            latency_ms=float(rng.lognormal(3, 0.3)),
        )
        for i in range(n)
    ]


def test_restored_model_continues_with_identical_readings_and_health() -> None:
    policy = ModelPolicy.model_validate(POLICY)
    original = ModelMonitor.build("fraud", policy, 0.0)
    for k in range(10):
        original.apply(events(100, k * 100, 0.5 if k >= 6 else 0.01, k), float(k))
        original.evaluate(float(k))
    assert original.health.level is Level.DEGRADED
    data = snapshot_model(original, None, TopicPartition("events", 3))
    assert partition_of(data) == TopicPartition("events", 3)
    restored = restore_model(data, policy, 10.0, None)
    assert restored.health.level is Level.DEGRADED
    assert restored.events == original.events
    for k in range(10, 20):
        batch = events(100, k * 100, 0.01, k)
        original.apply(batch, float(k))
        restored.apply(batch, float(k))
        a, b = original.evaluate(float(k)), restored.evaluate(float(k))
        assert (a is None) == (b is None)
        for sa, sb in zip(original.signals, restored.signals, strict=True):
            # repr: NaN effect sizes compare unequal as floats
            assert [repr(m.reading) for m in sa.members] == [repr(m.reading) for m in sb.members]
    assert restored.health.level == original.health.level


def test_a_detector_whose_spec_changed_starts_afresh() -> None:
    policy = ModelPolicy.model_validate(POLICY)
    original = ModelMonitor.build("fraud", policy, 0.0)
    original.apply(events(600, 0, 0.01, 1), 1.0)
    changed = json.loads(json.dumps(POLICY))
    changed["signals"][1]["detector"]["window"] = 300
    restored = restore_model(
        snapshot_model(original, None, None), ModelPolicy.model_validate(changed), 2.0, None
    )
    kept, fresh = restored.signals[0].members[0], restored.signals[1].members[0]
    assert repr(kept.reading) == repr(original.signals[0].members[0].reading)
    assert fresh.reading.samples == 0


async def test_directory_store_saves_loads_and_deletes(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "state")
    await store.start()
    await store.save(
        {
            "a/b": snapshot_model(
                ModelMonitor.build("a/b", ModelPolicy.model_validate(POLICY), 0.0), None, None
            )
        }
    )
    loaded = await store.load_all()
    assert list(loaded) == ["a/b"]
    await store.delete(["a/b"])
    assert await store.load_all() == {}


def config(tmp_path: Path, broker: EmbeddedBroker, topic: str) -> Path:
    data = {
        "kafka": {
            "bootstrap_servers": broker.bootstrap_servers,
            "topics": [topic],
            "group_id": f"g-{topic}",
            "dead_letter_topic": f"{topic}-dlq",
            "review_topic": f"{topic}-review",
            "auto_offset_reset": "earliest",
            "broker_timeout_s": 5,
        },
        "http": {"host": "127.0.0.1", "port": free_port()},
        "lifecycle": {"log_format": "text", "grace_period_s": 10},
        "state": {"backend": "file", "path": str(tmp_path / "state"), "interval_s": 0.5},
        "flags": {"type": "flagd_file", "path": str(tmp_path / "flags.json")},
        "actions": {"audit_log": str(tmp_path / "audit.jsonl")},
        "models": {
            "default": {
                **POLICY,
                "actions": {
                    "degraded": {"flags": {"fraud-rules": True}, "alert": {"severity": "page"}}
                },
            }
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(data))
    return path


def audit(tmp_path: Path, kind: str) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def payload(batch: list[Event]) -> list[tuple[bytes, bytes]]:
    return [
        (
            b"fraud",
            json.dumps(
                {
                    "model": e.model,
                    "request_id": e.request_id,
                    "error": e.error,
                    "latency_ms": e.latency_ms,
                }
            ).encode(),
        )
        for e in batch
    ]


@pytest.mark.integration
async def test_restarted_daemon_continues_the_incident_without_acting_again(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    topic = f"ckpt-{unique}"
    await create_topic(broker.bootstrap_servers, topic)
    path = config(tmp_path, broker, topic)
    await produce(broker.bootstrap_servers, topic, payload(events(400, 0, 0.6, 1)))
    first = Daemon(load_settings(path), metrics=Metrics.create(CollectorRegistry()))
    task = asyncio.create_task(first.run())
    await wait_for(lambda: first.applied_events >= 400, what="first run applied")
    await wait_for(
        lambda: (
            "fraud" in first.engine.models
            and first.engine.models["fraud"].health.level is Level.DEGRADED
        ),
        what="degraded",
    )
    await wait_for(
        lambda: any(e["kind"] == "flag_applied" for e in first.actions.audit.recent),
        what="flag flipped",
    )
    first.request_stop("restart")
    assert await asyncio.wait_for(task, 20) == 0

    await produce(broker.bootstrap_servers, topic, payload(events(200, 400, 0.6, 2)))
    second = Daemon(load_settings(path), metrics=Metrics.create(CollectorRegistry()))
    task = asyncio.create_task(second.run())
    try:
        await wait_for(lambda: second.applied_events >= 200, what="second run applied")
        assert second.restored_models == 1
        monitor = second.engine.models["fraud"]
        assert monitor.health.level is Level.DEGRADED
        assert monitor.events >= 600
    finally:
        second.request_stop("done")
        assert await asyncio.wait_for(task, 20) == 0
    assert len(audit(tmp_path, "transition")) == 1
    assert len(audit(tmp_path, "flag_applied")) == 1


@pytest.mark.integration
async def test_idle_models_are_dropped_and_their_checkpoints_deleted(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    settings = load_settings(config(tmp_path, broker, f"idle-{unique}"))
    clock = [1000.0]
    daemon = Daemon(settings, metrics=Metrics.create(CollectorRegistry()), clock=lambda: clock[0])
    assert daemon.store is not None
    await daemon.store.start()
    daemon.engine.apply(events(10, 0, 0.0, 1), clock[0])
    await daemon.ownership.checkpoint({"fraud"})
    assert list(await daemon.store.load_all()) == ["fraud"]
    clock[0] += settings.engine.model_idle_ttl_s + 1
    await daemon._expire_idle_models(clock[0])
    assert daemon.engine.models == {}
    assert await daemon.store.load_all() == {}


@pytest.mark.integration
async def test_handed_over_model_leaves_no_stale_series_on_metrics(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    settings = load_settings(config(tmp_path, broker, f"series-{unique}"))
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(settings, metrics=metrics)
    tp = TopicPartition(f"series-{unique}", 0)
    daemon.engine.apply(events(200, 0, 0.6, 1), 1.0)
    daemon.ownership.owned.partition["fraud"] = tp
    daemon.publisher.publish({"fraud"})
    get = metrics.registry.get_sample_value
    assert get("driftwarden_model_health_level", {"model": "fraud"}) is not None
    assert daemon.store is not None
    await daemon.store.start()
    await daemon._on_revoked({tp})
    assert get("driftwarden_model_health_level", {"model": "fraud"}) is None
    assert get("driftwarden_signal_value", {"model": "fraud", "signal": "error_rate"}) is None
    assert "fraud" not in daemon.engine.models
