"""Helpers for the codec tests: a real librdkafka producer (confluent-kafka) writing one
partition per compression codec, a daemon config over it, and per-partition counts."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import require_component

#: Every compression.type a Kafka producer may use; partition i is written with CODECS[i].
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")

POLICY: dict[str, Any] = {
    "models": {
        "default": {
            "mode": "shadow",
            "signals": [
                {
                    "name": "latency_drift",
                    "source": "latency_ms",
                    "detector": {"type": "adwin", "window": 200, "min_samples": 50},
                }
            ],
        }
    }
}


def confluent_producer_class() -> Any:
    try:
        from confluent_kafka import Producer
    except ImportError:
        require_component(False, "confluent-kafka (librdkafka), pip install confluent-kafka")
    return Producer


def _produce_sync(bootstrap: str, topic: str, codec: str, partition: int, count: int) -> None:
    producer = confluent_producer_class()(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": codec,
            # Big batches, so most records travel in compressed batches of many records.
            "linger.ms": 50,
            "batch.num.messages": 1000,
            "enable.idempotence": False,
            "acks": "all",
            "log_level": 3,
        }
    )
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for i in range(count):
        model = f"{codec}-model-{i % 3}"
        body = {
            "model": model,
            "request_id": f"{codec}-{i}",
            "latency_ms": 10.0 + i % 7,
            # Compressible padding, as real events mostly are.
            "features": {"region": "eu-west-1", "tier": "gold", "note": "x" * 40},
        }
        while True:
            try:
                producer.produce(
                    topic,
                    value=json.dumps(body).encode(),
                    key=model.encode(),
                    partition=partition,
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(30)
    if left or failures:
        pytest.fail(
            f"librdkafka producer ({codec}) could not deliver to the test broker: "
            f"{left} undelivered, errors {failures[:3]}"
        )


async def produce_per_codec(
    bootstrap: str, topic: str, per_partition: int, codecs: tuple[str, ...] = CODECS
) -> None:
    """Write ``per_partition`` events to partition i with codec ``codecs[i]``."""
    for partition, codec in enumerate(codecs):
        await asyncio.to_thread(_produce_sync, bootstrap, topic, codec, partition, per_partition)


def write_config(
    tmp_path: Path, broker: EmbeddedBroker, topic: str, **extra: Any
) -> tuple[Path, Path, int]:
    """A daemon config reading ``topic``; returns (config, applied log, HTTP port)."""
    applied = tmp_path / "applied.log"
    port = free_port()
    config = {
        "kafka": {
            "bootstrap_servers": broker.bootstrap_servers,
            "topics": [topic],
            "group_id": f"g-{topic}",
            "dead_letter_topic": f"{topic}-dlq",
            "review_topic": f"{topic}-review",
            "auto_offset_reset": "earliest",
            "fetch_timeout_ms": 200,
            "broker_timeout_s": 5,
        },
        "engine": {"applied_log": str(applied)},
        "http": {"host": "127.0.0.1", "port": port},
        "lifecycle": {"log_format": "text", "grace_period_s": 10},
        **POLICY,
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, applied, port


def applied_per_codec(applied_log: Path) -> Counter[str]:
    """Events applied per codec, from the request ids the daemon logged (``codec-i``)."""
    if not applied_log.exists():
        return Counter()
    return Counter(line.rsplit("-", 1)[0] for line in applied_log.read_text().split())


def record_batch_module() -> Any:
    """The module whose DefaultRecordBatch aiokafka uses (C extension or pure Python): its
    module-level decoders are the ones called on a compressed batch."""
    from aiokafka.record.default_records import DefaultRecordBatch

    return sys.modules[DefaultRecordBatch.__module__]


@contextmanager
def counting_decoders() -> Iterator[Counter[str]]:
    """Count the calls of each codec's decoder while the block runs: proves the daemon read
    compressed batches (the broker stored and served them as the producer wrote them)."""
    module = record_batch_module()
    calls: Counter[str] = Counter()
    originals: dict[str, Callable[..., Any]] = {}
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        name = f"{codec}_decode"
        original = originals[name] = getattr(module, name)

        def counted(data: Any, _original: Any = original, _codec: str = codec) -> Any:
            calls[_codec] += 1
            return _original(data)

        setattr(module, name, counted)
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(module, name, original)
