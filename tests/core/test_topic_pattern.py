"""Topics as a pattern: ``kafka.topic_pattern`` with ``topics: []`` consumes every matching
topic, on a real broker, and no other.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker
from tests.conftest import wait_for
from tests.core.kafka_helpers import committed_offsets, create_topic, end_offsets, event, produce

pytestmark = pytest.mark.integration


async def test_a_topic_pattern_consumes_every_matching_topic_and_no_other(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    first, second, other = f"pat-{unique}-orders", f"pat-{unique}-search", f"nopat-{unique}"
    for topic, partitions in ((first, 2), (second, 1), (other, 1)):
        await create_topic(bootstrap, topic, partitions=partitions)
    sent = {
        first: await produce(bootstrap, first, (event(f"orders-{i % 2}", i) for i in range(300))),
        second: await produce(bootstrap, second, (event("search", i) for i in range(200))),
        other: await produce(bootstrap, other, (event("unwatched", i) for i in range(50))),
    }
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topics": [],
            "topic_pattern": f"pat-{re.escape(unique)}-.*",
            "group_id": f"g-{unique}",
            # Outside the pattern: the daemon must not read back its own side topics.
            "dead_letter_topic": f"dlq-{unique}",
            "review_topic": f"review-{unique}",
            "auto_offset_reset": "earliest",
            "fetch_timeout_ms": 100,
            "broker_timeout_s": 5,
        },
        "http": {"host": "127.0.0.1", "port": 0},
        "lifecycle": {"log_format": "text", "grace_period_s": 10},
        "flags": {"type": "flagd_file", "path": str(tmp_path / "flags.json")},
        "models": {"default": {"mode": "shadow"}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path)
    assert settings.kafka.topics == []
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(settings, metrics=metrics)
    task = asyncio.create_task(daemon.run())
    try:
        expected = sent[first] + sent[second]
        await wait_for(
            lambda: daemon.applied_events >= expected or task.done(),
            timeout=40,
            what=lambda: f"{expected} events from both topics, got {daemon.applied_events}",
        )
        assert {tp.topic for tp in daemon.consumer.assignment} == {first, second}
        assert len(daemon.consumer.assignment) == 3
    finally:
        daemon.request_stop("test over")
        code = await asyncio.wait_for(task, 30)
    assert code == 0
    assert daemon.applied_events == expected
    assert {m: daemon.engine.models[m].events for m in daemon.engine.models} == {
        "orders-0": 150,
        "orders-1": 150,
        "search": 200,
    }
    get = metrics.registry.get_sample_value
    assert get("driftwarden_records_consumed_total", {"topic": first}) == sent[first]
    assert get("driftwarden_records_consumed_total", {"topic": second}) == sent[second]
    assert get("driftwarden_records_consumed_total", {"topic": other}) is None
    # Offsets committed on both topics: a restart resumes each where it stopped.
    for topic in (first, second):
        committed = await committed_offsets(bootstrap, f"g-{unique}", topic)
        ends = await end_offsets(bootstrap, topic, sent[topic])
        assert {p: o for p, o in committed.items() if o is not None} == ends, topic
