"""record: a topic dumped to JSON lines on a real broker (Tansu) replays to the same events."""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from monitor.cli.record import register
from monitor.config.settings import load_settings
from monitor.tools.embedded_broker import EmbeddedBroker
from monitor.tools.record import TopicRecorder
from monitor.tools.replay import replay_file
from tests.core.kafka_helpers import create_topic, event, produce
from tests.replay.streams import write_policy

pytestmark = pytest.mark.integration


async def test_record_then_replay_round_trips_every_json_value_and_skips_the_rest(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    await create_topic(broker.bootstrap_servers, unique, partitions=2)
    values = [event(f"model-{i % 3}", i, ts=1_700_000_000 + i) for i in range(300)]
    values += [(b"x", b"not json"), (b"x", b'{"model": "pretty",\n "ts": 1700000400}')]
    await produce(broker.bootstrap_servers, unique, values)
    out = tmp_path / "dump.jsonl.gz"
    async with TopicRecorder({"bootstrap_servers": broker.bootstrap_servers}, unique) as rec:
        stats = await rec.run(out)
    assert (stats.written, stats.skipped, stats.partitions) == (301, 1, 2)
    lines = gzip.decompress(out.read_bytes()).decode().splitlines()
    assert len(lines) == 301
    ids = {json.loads(line).get("request_id") for line in lines}
    assert ids >= {f"model-{i % 3}-{i}" for i in range(300)}
    policy = write_policy(tmp_path / "policy.yaml")
    result = replay_file(out, load_settings(policy))
    assert (result.events, result.bad_lines) == (301, 0)
    assert sorted(result.model_events) == ["model-0", "model-1", "model-2", "pretty"]


async def test_record_honours_max_and_the_time_range_of_record_timestamps(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    await create_topic(broker.bootstrap_servers, unique, partitions=1)
    base_ms = int(time.time() * 1000) - 3_600_000
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for i in range(200):
            key, value = event("m", i)
            # Two bursts an hour ago, ten minutes apart.
            at = base_ms + (0 if i < 100 else 600_000) + i
            await producer.send_and_wait(unique, value=value, key=key, timestamp_ms=at)
    finally:
        await producer.stop()
    options = {"bootstrap_servers": broker.bootstrap_servers}
    capped = tmp_path / "capped.jsonl"
    async with TopicRecorder(options, unique, max_records=50) as rec:
        assert (await rec.run(capped)).written == 50
    assert len(capped.read_text().splitlines()) == 50

    second = tmp_path / "second.jsonl"
    async with TopicRecorder(options, unique, from_ms=base_ms + 300_000) as rec:
        stats = await rec.run(second)
    got = [json.loads(line)["request_id"] for line in second.read_text().splitlines()]
    assert got == [f"m-{i}" for i in range(100, 200)], stats

    first = tmp_path / "first.jsonl"
    async with TopicRecorder(options, unique, to_ms=base_ms + 300_000) as rec:
        await rec.run(first)
    got = [json.loads(line)["request_id"] for line in first.read_text().splitlines()]
    assert got == [f"m-{i}" for i in range(100)]


async def test_record_command_writes_the_file_and_says_how_many(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await create_topic(broker.bootstrap_servers, unique, partitions=1)
    await produce(broker.bootstrap_servers, unique, [event("m", i) for i in range(20)])
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "cli.jsonl"
    args = parser.parse_args(
        [
            "record",
            "--bootstrap-servers",
            broker.bootstrap_servers,
            "--topic",
            unique,
            "--out",
            str(out),
            "--idle",
            "1",
            "-q",
        ]
    )
    # The command runs its own event loop: run it outside this test's loop.
    import asyncio

    code = await asyncio.to_thread(args.func, args)
    assert code == 0
    assert len(out.read_text().splitlines()) == 20
    assert "recorded 20 values" in capsys.readouterr().out
