"""The daemon on a real broker: good and bad records, at-least-once across kill -9, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import fast_rate_window, wait_for
from tests.core.kafka_helpers import (
    committed_offsets,
    create_topic,
    end_offsets,
    event,
    produce,
    read_all,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

POLICY = {
    "models": {
        "default": {
            "mode": "shadow",
            "signals": [
                {
                    "name": "error_rate",
                    "source": "error",
                    "detector": fast_rate_window(),
                    "thresholds": {"degraded": 0.2},
                },
                {
                    "name": "latency_drift",
                    "source": "latency_ms",
                    "detector": {"type": "adwin", "window": 200, "min_samples": 50},
                },
            ],
        }
    }
}


def write_config(
    tmp_path: Path, broker: EmbeddedBroker, topic: str, group: str, **extra: object
) -> Path:
    config = {
        "kafka": {
            "bootstrap_servers": broker.bootstrap_servers,
            "topics": [topic],
            "group_id": group,
            "dead_letter_topic": f"{topic}-dlq",
            "review_topic": f"{topic}-review",
            "auto_offset_reset": "earliest",
            "max_poll_records": 500,
            "broker_timeout_s": 5,
        },
        "http": {"host": "127.0.0.1", "port": free_port()},
        "lifecycle": {"log_format": "text", "grace_period_s": 10},
        **POLICY,
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_good_records_applied_bad_records_dead_lettered_with_reasons(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    topic, group = f"events-{unique}", f"group-{unique}"
    await create_topic(broker.bootstrap_servers, topic, partitions=3)
    good = [event(f"model-{i % 5}", i) for i in range(3000)]
    bad = [
        (b"m", b"not json at all"),
        (b"m", json.dumps({"latency_ms": 3}).encode()),
        (b"m", json.dumps({"model": "m", "latency_ms": "slow"}).encode()),
        (b"m", json.dumps({"model": "m", "features": {"x": [1, 2]}}).encode()),
        (b"m", b'{"model": "m", "pad": "' + b"x" * 2000 + b'"}'),
    ]
    values = good[:1500] + bad + good[1500:]
    await produce(broker.bootstrap_servers, topic, values)

    settings = load_settings(write_config(tmp_path, broker, topic, group))
    settings.kafka.max_record_bytes = 1024
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(settings, metrics=metrics)
    daemon.decoder.max_bytes = 1024
    task = asyncio.create_task(daemon.run())
    started = time.monotonic()
    await wait_for(lambda: daemon.applied_events >= len(good), timeout=60, what="all events")
    elapsed = time.monotonic() - started
    await wait_for(
        lambda: (
            (metrics.registry.get_sample_value("driftwarden_dead_lettered_total") or 0) >= len(bad)
        ),
        what="dead letters",
    )
    daemon.request_stop("test")
    assert await asyncio.wait_for(task, 30) == 0
    print(f"\napplied {len(good)} events in {elapsed:.2f}s ({len(good) / elapsed:.0f} events/s)")

    assert daemon.applied_events == len(good)
    assert sum(m.events for m in daemon.engine.models.values()) == len(good)
    get = metrics.registry.get_sample_value
    assert get("driftwarden_bad_records_total", {"reason": "not_json"}) == 1
    assert get("driftwarden_bad_records_total", {"reason": "missing_model"}) == 1
    assert get("driftwarden_bad_records_total", {"reason": "wrong_type"}) == 2
    assert get("driftwarden_bad_records_total", {"reason": "too_large"}) == 1
    # per-model event counts (what "no events" alerts on), 600 events for each of 5 models
    for i in range(5):
        assert get("driftwarden_model_events_total", {"model": f"model-{i}"}) == 600

    dead = await read_all(broker.bootstrap_servers, f"{topic}-dlq", len(bad))
    assert sorted(r.value for r in dead) == sorted(v for _, v in bad)
    for record in dead:
        headers = dict(record.headers)
        assert headers["driftwarden.source.topic"] == topic.encode()
        assert int(headers["driftwarden.source.offset"]) >= 0
        assert headers["driftwarden.reason"] in {
            b"not_json",
            b"missing_model",
            b"wrong_type",
            b"too_large",
        }
    wrong = [
        dict(r.headers) for r in dead if dict(r.headers)["driftwarden.reason"] == b"wrong_type"
    ]
    assert any(b"$.latency_ms" in h["driftwarden.detail"] for h in wrong)

    committed = await committed_offsets(broker.bootstrap_servers, group, topic)
    ends = await end_offsets(broker.bootstrap_servers, topic, len(values))
    assert {p: o for p, o in committed.items() if o is not None} == ends


def _spawn(config: Path, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    # The child keeps its own copy of the descriptor; ours is closed at once.
    with (tmp_path / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _applied_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line]


async def test_kill_9_mid_stream_then_restart_applies_every_event_at_least_once(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    topic, group = f"events-{unique}", f"group-{unique}"
    await create_topic(broker.bootstrap_servers, topic, partitions=2)
    applied_log = tmp_path / "applied.txt"
    config = write_config(tmp_path, broker, topic, group, engine={"applied_log": str(applied_log)})
    total = 20_000
    await produce(
        broker.bootstrap_servers, topic, (event(f"model-{i % 4}", i) for i in range(total // 2))
    )
    first = _spawn(config, tmp_path, "first")
    try:
        # Kill once part of the stream was applied, while more is still arriving: the rest
        # is paced (pacing only), and its last part waits for the kill, so the kill always
        # comes mid-stream however slowly the first process starts.
        killed = asyncio.Event()
        last = total - 500

        async def produce_rest() -> None:
            for start in range(total // 2, total, 500):
                if start == last:
                    await killed.wait()
                await produce(
                    broker.bootstrap_servers,
                    topic,
                    (event(f"model-{i % 4}", i) for i in range(start, start + 500)),
                )
                await asyncio.sleep(0.5)

        producing = asyncio.create_task(produce_rest())
        await wait_for(
            lambda: len(_applied_ids(applied_log)) >= 2000,
            timeout=60,
            what="first process applying events",
        )
        still_producing = not producing.done()
        first.kill()
        first.wait(10)
        killed_at = len(set(_applied_ids(applied_log)))
        killed.set()
        await producing
        assert still_producing and killed_at < total, "the kill came too late to test anything"
    finally:
        if first.poll() is None:
            first.kill()
        if "producing" in locals() and not producing.done():
            producing.cancel()
    second = _spawn(config, tmp_path, "second")
    try:
        await wait_for(
            lambda: len(set(_applied_ids(applied_log))) >= total,
            timeout=90,
            what="every event applied after restart",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    ids = _applied_ids(applied_log)
    expected = {f"model-{i % 4}-{i}" for i in range(total)}
    assert set(ids) == expected
    print(f"\nkilled after {killed_at} applied; {len(ids) - total} replayed twice after restart")


async def test_sigterm_exits_zero_within_grace_period_with_offsets_committed(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    topic, group = f"events-{unique}", f"group-{unique}"
    await create_topic(broker.bootstrap_servers, topic, partitions=2)
    applied_log = tmp_path / "applied.txt"
    config = write_config(tmp_path, broker, topic, group, engine={"applied_log": str(applied_log)})
    total = 5000
    await produce(broker.bootstrap_servers, topic, (event("m", i) for i in range(total)))
    proc = _spawn(config, tmp_path, "daemon")
    try:
        await wait_for(
            lambda: len(_applied_ids(applied_log)) >= total, timeout=60, what="all events applied"
        )
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"\nSIGTERM to exit: {took:.2f}s")
    assert code == 0
    assert took < 10, f"exit took {took:.1f}s, over the 10 s grace period"
    committed = await committed_offsets(broker.bootstrap_servers, group, topic)
    ends = await end_offsets(broker.bootstrap_servers, topic, total)
    assert {p: o for p, o in committed.items() if o is not None} == ends
    assert "shutdown complete" in (tmp_path / "daemon.log").read_text()
