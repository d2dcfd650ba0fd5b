"""A partition the daemon cannot read never stalls the others: with one codec made to fail
inside the daemon's process (its library "missing", or its decompressor failing on the
batch), the other partitions are consumed to the end, the bad one is paused, reported (log
line, metrics, /readyz, /status), never committed past, retried with bounded backoff, and
read to the end once the codec works again."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiokafka.codec
import cramjam
import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.kafka import consumer as consumer_module
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker
from tests.conftest import wait_for
from tests.core.kafka_helpers import committed_offsets, create_topic, end_offsets
from tests.kafka.codec_helpers import (
    CODECS,
    applied_per_codec,
    produce_per_codec,
    record_batch_module,
    write_config,
)

PER_PARTITION = 3000


class BrokenCodec:
    """Makes one codec fail in this process until ``heal()``, the way it fails for real."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, codec: str, how: str) -> None:
        self.codec, self.how, self.broken = codec, how, True
        if how == "library_missing":
            # What aiokafka answers when cramjam is not installed: UnsupportedCodecError.
            original_check = getattr(aiokafka.codec, f"has_{codec}")
            monkeypatch.setattr(
                aiokafka.codec, f"has_{codec}", lambda: not self.broken and original_check()
            )
        else:
            # A batch its decompressor rejects (cramjam's own error, not a KafkaError).
            module = record_batch_module()
            original_decode = getattr(module, f"{codec}_decode")

            def decode(data: Any) -> Any:
                if self.broken:
                    raise cramjam.DecompressionError(f"{codec}: corrupt frame (test)")
                return original_decode(data)

            monkeypatch.setattr(module, f"{codec}_decode", decode)

    def heal(self) -> None:
        self.broken = False


def test_aiokafka_fetcher_waiter_is_there() -> None:
    """The consumer waits on aiokafka's private fetch waiter (see quirks.next_fetch_response)."""
    from aiokafka.consumer.fetcher import Fetcher

    assert callable(Fetcher._create_fetch_waiter)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("codec", "how", "reason"),
    [
        ("snappy", "library_missing", "UnsupportedCodecError"),
        ("lz4", "corrupt_batch", "DecompressionError"),
    ],
)
async def test_unreadable_partition_is_paused_reported_retried_and_stalls_no_other(
    broker: EmbeddedBroker,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    codec: str,
    how: str,
    reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger="monitor.kafka.consumer")
    topic = f"unreadable-{unique}"
    bad = TopicPartition(topic, CODECS.index(codec))
    await create_topic(broker.bootstrap_servers, topic, partitions=len(CODECS))
    await produce_per_codec(broker.bootstrap_servers, topic, PER_PARTITION)
    total = PER_PARTITION * len(CODECS)

    broken = BrokenCodec(monkeypatch, codec, how)
    config, applied_log, port = write_config(tmp_path, broker, topic)
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(load_settings(config), metrics=metrics)
    get = metrics.registry.get_sample_value
    labels = {"topic": topic, "partition": str(bad.partition)}
    task = asyncio.create_task(daemon.run())
    started = time.monotonic()
    try:
        join_s = await wait_for(
            lambda: daemon.consumer.assignment_received, timeout=60, what="an assignment"
        )
        detect_s = await wait_for(
            lambda: bad in daemon.consumer.unreadable, timeout=60, what=f"{bad} unreadable"
        )
        others = {c: PER_PARTITION for c in CODECS if c != codec}
        await wait_for(
            lambda: applied_per_codec(applied_log) == others,
            timeout=60,
            what=lambda: f"the other partitions applied: {applied_per_codec(applied_log)}",
        )
        others_s = time.monotonic() - started

        # Reported: state, metrics, /readyz and /status text, a log line with the offset.
        entry = daemon.consumer.unreadable[bad]
        assert (entry.offset, entry.reason) == (0, reason)
        assert get("driftwarden_partition_unreadable", labels) == 1
        assert (get("driftwarden_fetch_errors_total", labels) or 0) >= 1
        readable = {"topic": topic, "partition": str((bad.partition + 1) % len(CODECS))}
        assert get("driftwarden_partition_unreadable", readable) == 0
        assert get("driftwarden_fetch_errors_total", readable) == 0
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                assert response.status == 503
                problems = (await response.json())["problems"]
            async with http.get(f"http://127.0.0.1:{port}/status") as response:
                status = await response.json()
        name = f"{topic}[{bad.partition}]"
        assert any(name in p and "offset 0" in p and reason in p for p in problems), problems
        assert any(name in p for p in status["unreadable_partitions"]), status
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(name in line and "offset 0" in line and reason in line for line in lines)
        # Not committed past: the group holds no offset for the unreadable partition.
        committed = await committed_offsets(broker.bootstrap_servers, f"g-{topic}", topic)
        assert committed[bad.partition] is None, committed

        # Retried with bounded backoff (1 s doubling): a few failed reads, not a busy loop.
        await wait_for(lambda: daemon.consumer.unreadable[bad].failures >= 3, timeout=30)
        broken_for = time.monotonic() - started - join_s - detect_s
        failures = daemon.consumer.unreadable[bad].failures
        assert get("driftwarden_fetch_errors_total", labels) == failures
        assert failures <= 2 + math.log2(1 + broken_for / consumer_module.UNREADABLE_RETRY_FIRST_S)
        assert daemon.applied_events == total - PER_PARTITION

        # The codec works again: the partition heals at its next retry and is read to the end.
        broken.heal()
        healed_at = time.monotonic()
        await wait_for(
            lambda: daemon.applied_events >= total,
            timeout=60,
            what=lambda: f"every event applied after healing: {applied_per_codec(applied_log)}",
        )
        heal_s = time.monotonic() - healed_at
        assert not daemon.consumer.unreadable
        assert get("driftwarden_partition_unreadable", labels) == 0
        assert any(
            name in r.getMessage() and "readable again" in r.getMessage() for r in caplog.records
        )
    finally:
        daemon.request_stop("test")
        assert await asyncio.wait_for(task, 30) == 0

    print(
        f"\n{codec} ({how}): assigned {join_s:.2f}s after start, unreadable detected "
        f"{detect_s:.3f}s after the assignment; the other 4 "
        f"partitions ({4 * PER_PARTITION} events) applied {others_s:.2f}s after start; "
        f"{failures} failed reads in {broken_for:.1f}s; read to the end {heal_s:.2f}s after "
        f"healing; applied per codec {dict(applied_per_codec(applied_log))}"
    )
    assert applied_per_codec(applied_log) == dict.fromkeys(CODECS, PER_PARTITION)
    committed = await committed_offsets(broker.bootstrap_servers, f"g-{topic}", topic)
    assert committed == await end_offsets(broker.bootstrap_servers, topic, total)
