"""Human review on the real broker: a degraded model's low-confidence events go to the review
topic, nothing after recovery, and reviewers' labels come back as label events that feed
``label_error``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from monitor.tools.embedded_broker import EmbeddedBroker
from tests.conftest import fast_rate_window, wait_for
from tests.operator.harness import (
    Running,
    Traffic,
    error_rate_signal,
    incident,
    read_topic,
    recovery,
    running,
    write_settings,
)

pytestmark = pytest.mark.integration

MODEL = "fraud"
MAX_CONFIDENCE = 0.6


def label_error_signal() -> dict[str, Any]:
    return {
        "name": "label_error",
        "source": "label_error",
        "detector": fast_rate_window(),
        "thresholds": {"warn": 0.5},
    }


def reviewed(run: Running) -> float:
    value = run.metrics.registry.get_sample_value(
        "driftwarden_review_events_total", {"model": MODEL}
    )
    return value or 0.0


async def label_reading(run: Running) -> dict[str, Any]:
    async with run.http.get(run.url("/status")) as r:
        status = await r.json()
    signal = status["models"][MODEL]["signals"]["label_error"]
    reading: dict[str, Any] = signal["readings"]["label_error"]
    return reading


async def test_degraded_model_sends_low_confidence_events_to_review_and_labels_come_back(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    topic = f"review-{unique}"
    settings = write_settings(
        tmp_path,
        broker,
        topic,
        signals=[error_rate_signal(), label_error_signal()],
        degraded={
            "alert": {"severity": "page"},
            "review": {
                "sample_rate": 1.0,
                "max_confidence": MAX_CONFIDENCE,
                "max_per_second": 1000,
            },
        },
    )
    review_topic = settings.kafka.review_topic
    async with (
        running(settings, topic) as run,
        Traffic(broker.bootstrap_servers, topic, MODEL) as traffic,
    ):
        await wait_for(
            lambda: (
                MODEL in run.daemon.engine.models and run.daemon.engine.models[MODEL].events >= 200
            ),
            timeout=15,
            what="traffic",
        )
        assert reviewed(run) == 0, "a healthy model was sampled for review"

        await incident(run, traffic, MODEL)
        await wait_for(lambda: reviewed(run) >= 100, timeout=10, what="review samples")

        await recovery(run, traffic, MODEL)
        published = reviewed(run)
        applied = run.daemon.applied_events
        await wait_for(
            lambda: run.daemon.applied_events >= applied + 600,
            timeout=10,
            what="traffic after recovery",
        )
        assert reviewed(run) == published, "review events published after recovery"

        records = await read_topic(broker.bootstrap_servers, review_topic, int(published))
        assert len(records) == published
        events = [json.loads(r.value) for r in records]
        assert {r.key for r in records} == {MODEL.encode()}
        for event in events:
            assert event["model"] == MODEL
            assert event["confidence"] < MAX_CONFIDENCE
            # The event the service sent, without fields it did not set.
            assert traffic.sent[event["request_id"]] == event["confidence"]
            assert set(event) == {
                "model",
                "request_id",
                "latency_ms",
                "prediction",
                "confidence",
                "error",
            }
        assert len({e["request_id"] for e in events}) == len(events), "an event sent twice"

        # Reviewers' answers come back on the main topic as label events.
        before = await label_reading(run)
        assert before["samples"] == 0 and before["statistic"] is None
        for event in events[:80]:
            wrong = 0.0 if event["prediction"] == 1.0 else 1.0
            await traffic.send({"model": MODEL, "prediction": event["prediction"], "label": wrong})

        async def labels_counted() -> bool:
            reading = await label_reading(run)
            return bool(reading["samples"] >= 80 and reading["statistic"] is not None)

        await wait_for(labels_counted, timeout=10, what="label_error reading from labels")
        after = await label_reading(run)
        assert after["statistic"] == pytest.approx(1.0)
        # Label events are outcomes: never sampled for review themselves.
        assert reviewed(run) == published
