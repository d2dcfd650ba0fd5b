"""The bound on the number of models: models past ``engine.max_models`` get no monitor, their
events are counted (``dropped_events``, ``driftwarden_model_limit_dropped_events_total``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from monitor.config.policy import ModelPolicy, SignalPolicy
from monitor.config.settings import EngineSettings, Settings
from monitor.daemon.daemon import Daemon
from monitor.engine.engine import Engine
from monitor.engine.events import Event
from monitor.flags.config import FlagdFileSpec
from monitor.observability.metrics import Metrics
from tests.core.kafka_helpers import json_record

POLICY = ModelPolicy(
    mode="shadow",
    signals=[
        SignalPolicy.model_validate(
            {
                "source": "error",
                "detector": {
                    "type": "rate_window",
                    "window": 20,
                    "min_samples": 10,
                    "stride": 5,
                },
                "thresholds": {"degraded": 0.5},
            }
        )
    ],
)


def batch_of(models: int, per_model: int) -> list[Event]:
    return [Event(model=f"m{m}", error=False) for _ in range(per_model) for m in range(models)]


def test_models_past_max_models_get_no_monitor_and_their_events_are_counted() -> None:
    engine = Engine(lambda model: POLICY, max_models=3)
    engine.apply(batch_of(10, 4), now=1.0)
    assert sorted(engine.models) == ["m0", "m1", "m2"]
    assert [m.events for m in engine.models.values()] == [4, 4, 4]
    assert engine.dropped_events == 7 * 4
    # Later batches: the admitted models go on, the others stay out and are counted again.
    engine.apply(batch_of(10, 1), now=2.0)
    assert sorted(engine.models) == ["m0", "m1", "m2"]
    assert [m.events for m in engine.models.values()] == [5, 5, 5]
    assert engine.dropped_events == 7 * 5


def test_a_freed_slot_admits_the_next_new_model() -> None:
    engine = Engine(lambda model: POLICY, max_models=3)
    engine.apply(batch_of(4, 1), now=1.0)
    engine.drop("m1")
    engine.apply([Event(model="m3"), Event(model="m4")], now=2.0)
    assert sorted(engine.models) == ["m0", "m2", "m3"]
    assert engine.dropped_events == 2


def test_many_refused_models_are_logged_once_each_and_held_in_bounded_memory(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = Engine(lambda model: POLICY, max_models=3)
    caplog.set_level(logging.WARNING, logger="monitor.engine.engine")
    engine.apply(batch_of(5, 1), now=1.0)
    engine.apply(batch_of(5, 1), now=2.0)
    refused = [r.getMessage() for r in caplog.records if "max_models=3" in r.getMessage()]
    assert refused == [
        f"model 'm{m}' not watched (probation): max_models=3 unnamed models watched "
        "(name it in the policy or raise engine.max_models)"
        for m in (3, 4)
    ]
    # A flood of distinct model ids: no monitor each, and the set remembered to log each
    # once stops growing (the log stops too), so memory does not follow the traffic.
    engine.apply([Event(model=f"flood-{i}") for i in range(5000)], now=3.0)
    assert len(engine.models) == 3
    assert len(engine._refused) <= 1000
    assert len(caplog.records) <= 1000
    assert engine.dropped_events == 2 * 2 + 5000


async def test_the_daemon_counts_events_past_the_limit_in_its_metric(tmp_path: Path) -> None:
    settings = Settings(
        engine=EngineSettings(max_models=3),
        flags=FlagdFileSpec(path=tmp_path / "flags.json"),
        models={"default": POLICY},
    )
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(settings, metrics=metrics)
    tp = TopicPartition("events", 0)
    # Nothing reaches the broker: a batch of good records writes no dead letter.
    batch = {tp: [json_record(tp, i, {"model": f"m{i % 10}", "error": False}) for i in range(100)]}
    assert await daemon.batches.apply(batch)
    assert sorted(daemon.engine.models) == ["m0", "m1", "m2"]
    get = metrics.registry.get_sample_value
    assert get("driftwarden_model_limit_dropped_events_total") == 70
    # Refused events reach no detector: counted apart, by reason, and not as applied.
    assert get("driftwarden_events_applied_total") == 30
    assert get("driftwarden_events_refused_total", {"reason": "model_limit"}) == 70
    assert get("driftwarden_events_refused_total", {"reason": "probation"}) == 0
    assert daemon.applied_events == 30
    # Only admitted models are published; the dropped ones have no series to grow.
    published = {s.labels["model"] for m in metrics.health_level.collect() for s in m.samples}
    assert published == {"m0", "m1", "m2"}
    assert await daemon.batches.apply(batch)
    assert get("driftwarden_model_limit_dropped_events_total") == 140
    assert get("driftwarden_events_refused_total", {"reason": "model_limit"}) == 140
    assert get("driftwarden_events_applied_total") == 60
