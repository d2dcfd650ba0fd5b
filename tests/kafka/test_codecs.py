"""Every compression codec a Kafka producer may use is read by the daemon as installed: a
real librdkafka producer (confluent-kafka) writes one partition per codec to the test broker
(Tansu) and a live daemon applies and commits every event of every partition."""

from __future__ import annotations

import asyncio
import time
import tomllib
from pathlib import Path

import aiokafka.codec
import pytest
from prometheus_client import CollectorRegistry

from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker
from tests.conftest import wait_for
from tests.core.kafka_helpers import committed_offsets, create_topic, end_offsets
from tests.kafka.codec_helpers import (
    CODECS,
    applied_per_codec,
    counting_decoders,
    produce_per_codec,
    write_config,
)

ROOT = Path(__file__).resolve().parents[2]
PER_PARTITION = 4000


def test_codec_libraries_are_hard_dependencies() -> None:
    """aiokafka 0.14 decodes snappy, lz4 and zstd with cramjam, an optional extra of
    aiokafka: the daemon must require it itself, not through a dev or optional extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = [r.replace(" ", "").lower() for r in project["dependencies"]]
    assert any(r.startswith("cramjam>=") for r in required), required
    assert aiokafka.codec.has_snappy()
    assert aiokafka.codec.has_lz4()
    assert aiokafka.codec.has_zstd()


@pytest.mark.integration
async def test_daemon_applies_every_event_of_every_codec_from_librdkafka(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    topic = f"codecs-{unique}"
    await create_topic(broker.bootstrap_servers, topic, partitions=len(CODECS))
    await produce_per_codec(broker.bootstrap_servers, topic, PER_PARTITION)
    total = PER_PARTITION * len(CODECS)

    config, applied_log, _ = write_config(tmp_path, broker, topic)
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(load_settings(config), metrics=metrics)
    with counting_decoders() as decoded:
        task = asyncio.create_task(daemon.run())
        started = time.monotonic()
        try:
            await wait_for(
                lambda: daemon.applied_events >= total,
                timeout=90,
                what=lambda: f"every event applied, per codec {applied_per_codec(applied_log)}",
            )
            elapsed = time.monotonic() - started
        finally:
            daemon.request_stop("test")
            assert await asyncio.wait_for(task, 30) == 0

    per_codec = applied_per_codec(applied_log)
    print(f"\napplied per codec {dict(per_codec)} in {elapsed:.2f}s; decoder calls {dict(decoded)}")
    assert per_codec == dict.fromkeys(CODECS, PER_PARTITION)
    assert daemon.applied_events == total
    # Tansu stored and served the batches compressed, as librdkafka wrote them.
    for codec in CODECS[1:]:
        assert decoded[codec] > 0, f"no {codec} batch was decompressed: {dict(decoded)}"
    assert not daemon.consumer.unreadable
    committed = await committed_offsets(broker.bootstrap_servers, f"g-{topic}", topic)
    ends = await end_offsets(broker.bootstrap_servers, topic, total)
    assert committed == ends
