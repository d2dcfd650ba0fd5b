"""The daemon's HTTP side on a real broker: /metrics passes ``promtool check metrics``, /status
shows each model's readings, /readyz follows the assignment, /healthz fails on a dead batch
loop and on a blocked event loop.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from monitor.config.settings import Settings, load_settings
from monitor.daemon.daemon import Daemon
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker
from tests.conftest import fast_rate_window, require_component, wait_for
from tests.core.kafka_helpers import create_topic

pytestmark = pytest.mark.integration

MODELS = ("fraud", "churn", "search")
SIGNALS = ("error_rate", "latency_p95", "feature.amount")
PARTITIONS = 2

#: Small windows and a 50-event reference, so every signal is conclusive after 150 events.
POLICY: dict[str, Any] = {
    "default": {
        "mode": "shadow",
        "signals": [
            {
                "name": "error_rate",
                "source": "error",
                "detector": fast_rate_window(),
                "thresholds": {"warn": 0.1, "degraded": 0.2},
            },
            {
                "name": "latency_p95",
                "source": "latency_ms",
                "detector": {
                    "type": "quantile",
                    "q": 0.95,
                    "window": 100,
                    "min_samples": 50,
                    "stride": 10,
                    "persist": 0,
                },
                "thresholds": {"degraded": 500.0, "critical": 2000.0},
            },
            {
                "source": "feature",
                "feature": "amount",
                "detector": {
                    "type": "ks_window",
                    "window": 100,
                    "min_samples": 50,
                    "stride": 10,
                    "persist": 0,
                    "reference": {"size": 50},
                },
            },
        ],
    }
}


def daemon_settings(
    tmp_path: Path, bootstrap: str, topic: str, group: str, **http: Any
) -> Settings:
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topics": [topic],
            "group_id": group,
            "dead_letter_topic": f"{topic}-dlq",
            "review_topic": f"{topic}-review",
            "auto_offset_reset": "earliest",
            "fetch_timeout_ms": 100,
            "broker_timeout_s": 5,
        },
        # Port 0: the kernel picks a free one; the daemon reports it as http.bound_port.
        "http": {"host": "127.0.0.1", "port": 0, **http},
        "lifecycle": {"log_format": "text", "grace_period_s": 10},
        "flags": {"type": "flagd_file", "path": str(tmp_path / "flags.json")},
        "models": POLICY,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_settings(path)


def events(count: int) -> Iterable[tuple[int, bytes]]:
    """(partition, value): every model on every partition, 5 % errors, steady inputs."""
    for i in range(count):
        body = {
            "model": MODELS[i % len(MODELS)],
            "request_id": f"r-{i}",
            "latency_ms": 20.0 + i % 11,
            # Each (model, partition) stream has every 20th event failed.
            "error": (i // (len(MODELS) * PARTITIONS)) % 20 == 0,
            "features": {"amount": float(i % 17)},
        }
        yield i % PARTITIONS, json.dumps(body).encode()


async def produce_to_partitions(
    bootstrap: str, topic: str, values: Iterable[tuple[int, bytes]]
) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=value, partition=partition)
            for partition, value in values
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(futures)


@asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[asyncio.Task[int]]:
    """The daemon's run() as a task, its HTTP port bound; stopped (and awaited) on exit."""
    task = asyncio.create_task(daemon.run())
    try:
        await wait_for(
            lambda: daemon.http.bound_port is not None or task.done(), what="HTTP server"
        )
        assert not task.done(), "the daemon stopped during start"
        yield task
    finally:
        daemon.request_stop("test over")
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)


async def get(daemon: Daemon, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{daemon.http.bound_port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def promtool() -> str:
    path = shutil.which("promtool") or "/usr/bin/promtool"
    require_component(Path(path).is_file(), "promtool (Debian package prometheus)")
    return path


def promtool_check_metrics(exposition: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of a text exposition (label values hold no commas)."""
    out = {}
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        pairs = (p.split("=", 1) for p in labels.rstrip("}").split(",") if p)
        out[(name, frozenset((k, v.strip('"')) for k, v in pairs))] = float(value)
    return out


def families(exposition: str) -> set[str]:
    return {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE ")}


def test_promtool_check_metrics_reports_a_badly_named_counter() -> None:
    # The check the live /metrics must pass is not vacuous: promtool does flag problems.
    done = promtool_check_metrics(
        "# HELP requests Requests.\n# TYPE requests counter\nrequests 1\n"
    )
    assert "_total" in done.stdout + done.stderr


async def test_metrics_status_readyz_and_healthz_of_a_live_daemon(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    topic = f"http-{unique}"
    await create_topic(broker.bootstrap_servers, topic, partitions=PARTITIONS)
    total = await produce_to_partitions(broker.bootstrap_servers, topic, events(900))
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(
        daemon_settings(tmp_path, broker.bootstrap_servers, topic, f"g-{unique}"), metrics=metrics
    )
    # Holding the batch lock parks the rebalance listener, so /readyz is seen before the
    # assignment deterministically.
    await daemon.consumer.batch_lock.acquire()
    released = False
    try:
        async with running(daemon):
            await wait_for(lambda: daemon._loop_task is not None, what="the batch loop")
            status, body = await get(daemon, "/readyz")
            assert status == 503
            assert "no partition assignment yet" in json.loads(body)["problems"]
            daemon.consumer.batch_lock.release()
            released = True

            async def ready() -> bool:
                return (await get(daemon, "/readyz"))[0] == 200

            await wait_for(ready, timeout=30, what="/readyz 200 after the assignment")
            await wait_for(lambda: daemon.applied_events >= total, timeout=30, what="all events")
            lag = metrics.consumer_lag
            assigned = {(tp.topic, str(tp.partition)) for tp in daemon.consumer.assignment}
            assert assigned == {(topic, str(p)) for p in range(PARTITIONS)}
            await wait_for(
                lambda: all(
                    metrics.registry.get_sample_value(
                        "driftwarden_consumer_lag_records", {"topic": t, "partition": p}
                    )
                    == 0
                    for t, p in assigned
                ),
                what=lambda: f"lag 0 on every partition, got {next(iter(lag.collect())).samples}",
            )

            status, exposition = await get(daemon, "/metrics")
            assert status == 200
            status, health = await get(daemon, "/healthz")
            assert (status, json.loads(health)) == (200, {"ok": True, "problems": []})
            status, body = await get(daemon, "/status")
            assert status == 200
            report = json.loads(body)
    finally:
        if not released:
            daemon.consumer.batch_lock.release()

    done = promtool_check_metrics(exposition)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    names = families(exposition)
    assert len(names) > 20
    assert [n for n in names if not n.startswith("driftwarden_")] == []

    found = samples(exposition)
    for t, p in assigned:
        key = ("driftwarden_consumer_lag_records", frozenset({("topic", t), ("partition", p)}))
        assert found[key] == 0
    assert found[("driftwarden_events_applied_total", frozenset())] == total
    for model in MODELS:
        for signal in SIGNALS:
            labels = {("model", model), ("signal", signal)}
            assert ("driftwarden_signal_value", frozenset(labels)) in found, (model, signal)
            assert found[("driftwarden_signal_samples", frozenset(labels))] == 100
        for signal, level, bound in (
            ("error_rate", "warn", 0.1),
            ("error_rate", "degraded", 0.2),
            ("latency_p95", "degraded", 500.0),
            ("latency_p95", "critical", 2000.0),
        ):
            labels = {("model", model), ("signal", signal), ("level", level)}
            assert found[("driftwarden_signal_threshold", frozenset(labels))] == bound
        # Without thresholds in the policy, the detector's own critical value is exported.
        labels = {("model", model), ("signal", "feature.amount"), ("level", "detector")}
        assert found[("driftwarden_signal_threshold", frozenset(labels))] > 0
        assert found[("driftwarden_model_health_level", frozenset({("model", model)}))] == 0

    assert report["ready"] is True
    assert report["applied_events"] == total
    assert sorted(report["partitions"]) == [f"{topic}[{p}]" for p in range(PARTITIONS)]
    assert sorted(report["models"]) == sorted(MODELS)
    for model, shown in report["models"].items():
        assert shown["state"] == "ok", model
        assert shown["events"] == total // len(MODELS)
        assert sorted(shown["signals"]) == sorted(SIGNALS)
        for name, signal in shown["signals"].items():
            (reading,) = signal["readings"].values()
            assert reading["verdict"] in ("ok", "drift", "anomaly"), (model, name, reading)
            assert reading["samples"] == 100
            assert isinstance(reading["statistic"], float)
        error_rate = shown["signals"]["error_rate"]
        assert error_rate["readings"]["error_rate"]["statistic"] == pytest.approx(0.05, abs=0.03)
        assert error_rate["thresholds"] == {"warn": 0.1, "degraded": 0.2}
        assert shown["signals"]["latency_p95"]["readings"]["latency_p95"]["statistic"] < 31


def test_healthz_reports_a_stuck_loop_when_the_heartbeat_is_late(tmp_path: Path) -> None:
    # Nothing connects: the check reads the heartbeat only.
    daemon = Daemon(
        daemon_settings(tmp_path, "127.0.0.1:9", "t", "g", max_loop_lag_s=2.0),
        metrics=Metrics.create(CollectorRegistry()),
    )
    assert daemon.health_problems() == []
    daemon.heartbeat.last_beat = time.monotonic() - 1.0
    assert daemon.health_problems() == []
    daemon.heartbeat.last_beat = time.monotonic() - 10.0
    (problem,) = daemon.health_problems()
    assert problem.startswith("event loop stuck: heartbeat 9.")


def get_in_thread(url: str, timeout: float) -> tuple[str, object]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return "answered", response.status
    except urllib.error.HTTPError as err:
        return "answered", err.code
    except (TimeoutError, urllib.error.URLError) as err:
        return "error", err


async def test_healthz_times_out_and_then_fails_while_the_event_loop_is_blocked(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"stuck-{unique}"
    await create_topic(broker.bootstrap_servers, topic)
    settings = daemon_settings(
        tmp_path, broker.bootstrap_servers, topic, f"g-{unique}", max_loop_lag_s=1.0
    )
    daemon = Daemon(settings, metrics=Metrics.create(CollectorRegistry()))

    async def idle_fetch() -> Any:
        # No records here: a real fetch would block the stop for the group join (~5 s).
        await asyncio.sleep(0.05)
        return {}

    monkeypatch.setattr(daemon.consumer, "fetch", idle_fetch)
    async with running(daemon):
        url = f"http://127.0.0.1:{daemon.http.bound_port}/healthz"
        # The same probe, from another thread, answers while the loop runs ...
        assert await asyncio.to_thread(get_in_thread, url, 1.0) == ("answered", 200)

        # ... and times out (a failed liveness probe) while a coroutine blocks the loop.
        asked = threading.Event()
        outcome: list[tuple[str, object]] = []

        def probe() -> None:
            asked.set()
            outcome.append(get_in_thread(url, 1.0))

        thread = threading.Thread(target=probe, name="liveness-probe")
        thread.start()
        assert asked.wait(5)
        time.sleep(2.0)  # noqa: ASYNC251 - blocking the loop is the point of this test
        # The loop just woke: the heartbeat is 1.5 s late, over max_loop_lag_s.
        problems = daemon.health_problems()
        await asyncio.to_thread(thread.join, 5)
        ((kind, error),) = outcome
        assert kind == "error", error
        assert "timed out" in str(error)
        assert [p.split(":")[0] for p in problems] == ["event loop stuck"]

        # Once the loop runs again, so does the heartbeat, and /healthz answers 200.
        async def healthy() -> bool:
            return (await get(daemon, "/healthz"))[0] == 200

        await wait_for(healthy, timeout=5, what="/healthz 200 after the loop runs again")


async def test_healthz_fails_with_the_reason_when_the_batch_loop_died(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"died-{unique}"
    await create_topic(broker.bootstrap_servers, topic)
    daemon = Daemon(
        daemon_settings(tmp_path, broker.bootstrap_servers, topic, f"g-{unique}"),
        metrics=Metrics.create(CollectorRegistry()),
    )

    # The consumer is real (started, joining its group); its fetch fails on demand.
    explode = asyncio.Event()

    async def fetch() -> Any:
        await explode.wait()
        raise RuntimeError("fetch exploded")

    monkeypatch.setattr(daemon.consumer, "fetch", fetch)
    async with running(daemon) as task:
        await wait_for(lambda: daemon._loop_task is not None, what="the batch loop")
        status, _ = await get(daemon, "/healthz")
        assert status == 200
        # The daemon shuts down once its batch loop dies; holding the batch lock holds that
        # shutdown at its first step, with the HTTP server still up.
        async with daemon.consumer.batch_lock:
            explode.set()
            loop_task = daemon._loop_task
            assert loop_task is not None
            await wait_for(loop_task.done, what="the batch loop to die")
            status, body = await get(daemon, "/healthz")
            assert (status, json.loads(body)) == (
                503,
                {"ok": False, "problems": ["batch loop died"]},
            )
            assert isinstance(loop_task.exception(), RuntimeError)
        # A dead batch loop also ends the process with a failure code (Kubernetes restarts it).
        assert await asyncio.wait_for(task, 15) == 1
