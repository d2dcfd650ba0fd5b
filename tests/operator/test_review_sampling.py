"""Review sampling rules of ``Actions.after_batch`` without a broker: which events of which
models go to the review topic, and at what rate.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry

from monitor.actions.actions import Actions, AuditLog
from monitor.config.policy import Level, LevelActions, ModelPolicy, ReviewAction
from monitor.engine.events import Event
from monitor.observability.metrics import Metrics

REVIEW_TOPIC = "review"


class Writer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], bytes | None]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.sent.append((topic, msgspec.json.decode(value), key))


def engine_with(**models: tuple[Level, ModelPolicy]) -> Any:
    return SimpleNamespace(
        models={
            name: SimpleNamespace(health=SimpleNamespace(level=level), policy=policy)
            for name, (level, policy) in models.items()
        }
    )


def policy(mode: str = "enforce", **levels: ReviewAction) -> ModelPolicy:
    return ModelPolicy(
        mode=mode,  # type: ignore[arg-type]
        actions={name: LevelActions(review=review) for name, review in levels.items()},  # type: ignore[misc]
    )


def actions() -> Actions:
    return Actions(
        Metrics.create(CollectorRegistry()),
        AuditLog(None),
        policy_for=lambda model: ModelPolicy(),
        review_topic=REVIEW_TOPIC,
    )


ALL = ReviewAction(sample_rate=1.0, max_per_second=1e6)


async def test_only_models_at_degraded_or_worse_in_enforce_mode_are_sampled() -> None:
    engine = engine_with(
        ok=(Level.OK, policy(degraded=ALL)),
        warn=(Level.WARN, policy(degraded=ALL)),
        degraded=(Level.DEGRADED, policy(degraded=ALL)),
        shadow=(Level.DEGRADED, policy("shadow", degraded=ALL)),
        unconfigured=(Level.DEGRADED, ModelPolicy()),
    )
    events = [Event(model=m, request_id=f"{m}-{i}") for m in engine.models for i in range(3)]
    writer = Writer()
    await actions().after_batch(events, engine, writer)  # type: ignore[arg-type]
    assert [body["request_id"] for _, body, _ in writer.sent] == [f"degraded-{i}" for i in range(3)]
    assert {(topic, key) for topic, _, key in writer.sent} == {(REVIEW_TOPIC, b"degraded")}


async def test_a_critical_model_keeps_the_review_configured_at_degraded() -> None:
    engine = engine_with(fraud=(Level.CRITICAL, policy(degraded=ALL)))
    writer = Writer()
    await actions().after_batch([Event(model="fraud")], engine, writer)  # type: ignore[arg-type]
    assert len(writer.sent) == 1


async def test_label_events_are_never_sent_back_to_review() -> None:
    engine = engine_with(fraud=(Level.DEGRADED, policy(degraded=ALL)))
    events = [
        Event(model="fraud", request_id="a", prediction=1.0),
        Event(model="fraud", request_id="a", prediction=1.0, label=0.0),
    ]
    writer = Writer()
    await actions().after_batch(events, engine, writer)  # type: ignore[arg-type]
    assert [body for _, body, _ in writer.sent] == [
        {"model": "fraud", "request_id": "a", "prediction": 1.0}
    ]


async def test_max_confidence_keeps_low_confidence_events_only() -> None:
    review = ReviewAction(sample_rate=1.0, max_confidence=0.6, max_per_second=1e6)
    engine = engine_with(fraud=(Level.DEGRADED, policy(degraded=review)))
    events = [Event(model="fraud", confidence=c) for c in (0.1, 0.59, 0.6, 0.9)] + [
        Event(model="fraud")
    ]
    writer = Writer()
    await actions().after_batch(events, engine, writer)  # type: ignore[arg-type]
    assert [body["confidence"] for _, body, _ in writer.sent] == [0.1, 0.59]


async def test_max_per_second_caps_a_burst() -> None:
    review = ReviewAction(sample_rate=1.0, max_per_second=5)
    engine = engine_with(fraud=(Level.DEGRADED, policy(degraded=review)))
    writer = Writer()
    await actions().after_batch(
        [Event(model="fraud") for _ in range(100)],
        engine,
        writer,  # type: ignore[arg-type]
    )
    assert len(writer.sent) == 5


async def test_sample_rate_samples_about_that_fraction() -> None:
    review = ReviewAction(sample_rate=0.1, max_per_second=1e6)
    engine = engine_with(fraud=(Level.DEGRADED, policy(degraded=review)))
    writer = Writer()
    await actions().after_batch(
        [Event(model="fraud") for _ in range(5000)],
        engine,
        writer,  # type: ignore[arg-type]
    )
    assert 400 <= len(writer.sent) <= 600
