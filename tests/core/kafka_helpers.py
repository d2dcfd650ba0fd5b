"""Helpers for tests on the real broker: topics, producing events, reading committed offsets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord


async def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, values: Iterable[tuple[bytes | None, bytes]]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    count = 0
    try:
        futures = []
        for key, value in values:
            futures.append(await producer.send(topic, value=value, key=key))
            count += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return count


def event(model: str, i: int, **fields: Any) -> tuple[bytes, bytes]:
    body = {
        "model": model,
        "request_id": f"{model}-{i}",
        "latency_ms": 10.0 + i % 7,
        "error": False,
        **fields,
    }
    return model.encode(), json.dumps(body).encode()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in sorted(partitions)}
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str, expected: int) -> dict[int, int | None]:
    """Next offset after the last record of each partition, read from the records themselves
    (Tansu's ListOffsets answers the last batch's base offset, not the log end)."""
    records = await read_all(bootstrap, topic, expected)
    ends: dict[int, int | None] = {}
    for record in records:
        ends[record.partition] = max(ends.get(record.partition) or 0, record.offset + 1)
    return ends


async def read_all(
    bootstrap: str, topic: str, expected: int, timeout: float = 20.0, drain_ms: int = 0
) -> list[Any]:
    """Records of ``topic`` from the start until ``expected`` arrived; with ``drain_ms``,
    also whatever else arrives within that time (to catch records that should not exist)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < expected:
                batch = await consumer.getmany(timeout_ms=200)
                for recs in batch.values():
                    records.extend(recs)
        if drain_ms:
            batch = await consumer.getmany(timeout_ms=drain_ms)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


def json_record(
    tp: TopicPartition, offset: int, body: dict[str, object]
) -> ConsumerRecord[bytes, bytes]:
    """A fetched record holding ``body`` as JSON, for tests that feed the daemon a batch."""
    value = json.dumps(body).encode()
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=len(value),
        headers=(),
    )
