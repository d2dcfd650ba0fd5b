"""Live fuzz: 10,000 hostile records of 20 kinds mixed with 3,000 valid events, through a
``driftwarden run`` process on the real broker. Every record is applied or dead-lettered
(exactly: the dead-letter topic is read back), offsets are committed to the end, the
process stays alive and ready, /metrics parses, and its memory stays bounded.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from monitor.engine.events import MAX_MODEL_ID_BYTES, Event, EventDecoder
from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import fast_rate_window, kafka_section, wait_for
from tests.core.kafka_helpers import committed_offsets, create_topic, read_all
from tests.fuzz.hostile import KINDS, Produced, hostile_records, valid_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = 10_000
VALID = 3_000
PARTITIONS = 3
SEED = 13
#: Gross bound on the daemon's resident memory (it holds at most a few batches of records of
#: at most max_record_bytes, and one dead letter of at most dead_letter_max_bytes each).
RSS_LIMIT_MB = 1024

POLICY = {
    "models": {
        "default": {
            "mode": "shadow",
            "signals": [
                {
                    "name": "error_rate",
                    "source": "error",
                    "detector": fast_rate_window(),
                    "thresholds": {"degraded": 0.5},
                },
                {"name": "latency", "source": "latency_ms", "detector": {"type": "adwin"}},
                {"name": "f0", "source": "feature", "feature": "f0", "detector": {"type": "adwin"}},
                {
                    "name": "country",
                    "source": "feature",
                    "feature": "country",
                    "detector": {"type": "psi", "max_categories": 20},
                },
            ],
        }
    }
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def spawn(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``driftwarden run`` of this worktree (PYTHONPATH), its output in ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
        )


async def produce_all(bootstrap: str, topic: str, records: list[Produced]) -> dict[int, int]:
    """Produce in order; return each partition's end offset (last offset + 1)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, acks="all", max_request_size=8 * 1024 * 1024
    )
    await producer.start()
    ends: dict[int, int] = {}
    try:
        futures = [
            await producer.send(topic, r.value, key=r.key, headers=r.headers) for r in records
        ]
        for metadata in await asyncio.gather(*futures):
            ends[metadata.partition] = max(ends.get(metadata.partition, 0), metadata.offset + 1)
    finally:
        await producer.stop()
    return ends


async def test_hostile_records_never_kill_or_wedge_a_live_daemon(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    topic = f"fuzz-{unique}"
    await create_topic(bootstrap, topic, partitions=PARTITIONS)
    records = hostile_records(HOSTILE, SEED) + valid_records(VALID, SEED)
    # Valid events spread through the stream, not in one block at its end.
    mixed = list(records)
    random.Random(SEED).shuffle(mixed)
    kafka = kafka_section(bootstrap, topic)
    decoder = EventDecoder(max_bytes=1_048_576)  # the daemon's default max_record_bytes
    expected = [isinstance(decoder.decode(r.value), Event) for r in mixed]
    expected_applied = sum(expected)
    expected_dead = len(mixed) - expected_applied
    per_kind = collections.Counter(r.kind for r in mixed)
    applied_by_kind = collections.Counter(
        r.kind for r, ok in zip(mixed, expected, strict=True) if ok
    )
    assert len([k for k in per_kind if k != "valid"]) >= 15 and len(KINDS) >= 15

    http_port = free_port()
    config = {
        "kafka": {**kafka, "max_poll_records": 2000, "broker_timeout_s": 10},
        "http": {"host": "127.0.0.1", "port": http_port},
        "lifecycle": {"log_format": "text", "grace_period_s": 20},
        **POLICY,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "daemon.log"
    proc = spawn(path, log_path)
    base = f"http://127.0.0.1:{http_port}"
    peak_rss = 0.0
    try:
        async with aiohttp.ClientSession() as http:

            async def scrape() -> dict[str, Any]:
                nonlocal peak_rss
                peak_rss = max(peak_rss, rss_mb(proc.pid))
                assert proc.poll() is None, f"daemon exited {proc.returncode}: see {log_path}"
                async with http.get(base + "/metrics") as response:
                    text = await response.text()
                samples: dict[str, Any] = {}
                for family in text_string_to_metric_families(text):
                    for s in family.samples:
                        samples[s.name + repr(sorted(s.labels.items()))] = (s.labels, s.value)
                return samples

            def total(samples: dict[str, Any], name: str) -> float:
                return sum(v for k, (_, v) in samples.items() if k.startswith(name + "["))

            async def up() -> bool:
                try:
                    await scrape()
                except aiohttp.ClientError:
                    return False
                return True

            await wait_for(up, timeout=60, what="the daemon's /metrics")
            started = time.monotonic()
            ends = await produce_all(bootstrap, topic, mixed)
            produced_s = time.monotonic() - started

            async def all_handled() -> bool:
                s = await scrape()
                return (
                    total(s, "driftwarden_events_applied_total") == expected_applied
                    and total(s, "driftwarden_dead_lettered_total") == expected_dead
                )

            await wait_for(all_handled, timeout=150, interval=0.5, what="every record handled")
            handled_s = time.monotonic() - started

            async def committed_to_end() -> bool:
                s = await scrape()
                committed = {
                    int(labels["partition"]): value
                    for key, (labels, value) in s.items()
                    if key.startswith("driftwarden_committed_offset[") and labels["topic"] == topic
                }
                return committed == {p: float(e) for p, e in ends.items()}

            await wait_for(committed_to_end, timeout=30, interval=0.5, what="offsets at the end")
            samples = await scrape()
            async with http.get(base + "/healthz") as response:
                assert response.status == 200, await response.text()
            async with http.get(base + "/readyz") as response:
                assert response.status == 200, await response.text()
            async with http.get(base + "/status") as response:
                status = json.loads(await response.text())
            assert status["applied_events"] == expected_applied
        bad_by_reason = {
            labels["reason"]: value
            for key, (labels, value) in samples.items()
            if key.startswith("driftwarden_bad_records_total[")
        }
        assert sum(bad_by_reason.values()) == expected_dead
        assert total(samples, "driftwarden_dead_letters_dropped_total") == 0
        # No hostile model id became a metric label.
        models = {labels["model"] for _, (labels, _) in samples.items() if "model" in labels}
        assert models and all(
            m.isprintable() and len(m.encode()) <= MAX_MODEL_ID_BYTES for m in models
        )
        assert total(samples, "driftwarden_batch_in_flight_seconds") < 5.0
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(40)
    assert code == 0, f"exit code {code}: see {log_path}"

    # Exact: read the dead-letter topic back (Tansu's end offsets cannot be trusted).
    dead = await read_all(
        bootstrap, kafka["dead_letter_topic"], expected_dead, timeout=60, drain_ms=1000
    )
    sources = {
        (
            int(dict(r.headers)["driftwarden.source.partition"]),
            int(dict(r.headers)["driftwarden.source.offset"]),
        )
        for r in dead
    }
    assert len(dead) == expected_dead and len(sources) == expected_dead
    committed = await committed_offsets(bootstrap, kafka["group_id"], topic)
    assert committed == ends
    largest = max(len(r.value or b"") for r in dead)
    assert largest <= 1_000_000
    print(
        f"\nlive fuzz: {len(mixed)} records ({HOSTILE} hostile of {len(per_kind) - 1} kinds, "
        f"{VALID} valid) produced in {produced_s:.1f}s, all handled in {handled_s:.1f}s: "
        f"{expected_applied} applied, {expected_dead} dead-lettered "
        f"(largest dead letter {largest} bytes); peak RSS {peak_rss:.0f} MB"
    )
    for kind in sorted(per_kind):
        print(f"  {kind:20} {per_kind[kind]:6} records, {applied_by_kind[kind]:5} applied")
    print("  by reason: " + ", ".join(f"{k}={v:.0f}" for k, v in sorted(bad_by_reason.items())))
    assert peak_rss < RSS_LIMIT_MB
