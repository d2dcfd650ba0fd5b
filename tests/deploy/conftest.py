"""Fixtures of the deployment checks: each overlay rendered once per session, promtool, the
deployed policy file, and the metrics a live daemon exports.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import fields

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import kafka_section
from tests.core.kafka_helpers import create_topic
from tests.deploy.deploy_helpers import (
    EXPOSITION_POLICY,
    K8S,
    OVERLAYS,
    REPO,
    Rendered,
    promtool_path,
    render,
    require_tool,
)
from tests.deploy.promql_names import Exposition, parse_exposition
from tests.waiting import wait_for_sync


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    out = {}
    for overlay in OVERLAYS:
        text = render(K8S / "overlays" / overlay)
        docs = [d for d in yaml.safe_load_all(text) if d]
        out[overlay] = Rendered(overlay, text, docs)
    return out


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool(promtool_path(), "promtool (Debian package prometheus)")


@pytest.fixture(scope="session")
def policy_text() -> str:
    return (K8S / "base" / "policy.yaml").read_text(encoding="utf-8")


def _expected_series() -> dict[str, set[str]]:
    """Every sample name ``Metrics.create()`` defines, with its label names (one child of
    each labelled metric makes those show)."""
    metrics = Metrics.create(CollectorRegistry())
    for f in fields(metrics):
        metric = getattr(metrics, f.name)
        # prometheus_client keeps a metric's label names in `_labelnames` (no public API).
        labelnames = getattr(metric, "_labelnames", ())
        if isinstance(metric, MetricWrapperBase) and labelnames:
            metric.labels(*("x" for _ in labelnames))
    return parse_exposition(generate_latest(metrics.registry).decode()).samples


def _events(count: int, partitions: int) -> list[tuple[int, bytes]]:
    """(partition, value): ``checkout`` fails half its requests, ``search`` is healthy."""
    out = []
    for i in range(count):
        model = ("checkout", "search")[i % 2]
        body = {
            "model": model,
            "request_id": f"{model}-{i}",
            "latency_ms": 20.0 + i % 13,
            "error": model == "checkout" and i % 4 == 0,
            "feedback": float(i % 3 == 0),
            "features": {"amount": float(i % 17)},
        }
        out.append((i % partitions, json.dumps(body).encode()))
    # Outcome events of ``checkout`` (a label, no prediction): its outcome join starts, so
    # the outcome series show (these are unmatched: the join keeps predictions from now on).
    for i in range(0, 40, 2):
        outcome = {"model": "checkout", "request_id": f"checkout-{i}", "label": "ok"}
        out.append((i % partitions, json.dumps(outcome).encode()))
    out.append((0, b"not json"))  # a bad record: the dead-letter metrics by reason
    return out


async def _produce(bootstrap: str, topic: str, values: list[tuple[int, bytes]]) -> None:
    await create_topic(bootstrap, topic, partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = [await producer.send(topic, value, partition=p) for p, value in values]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None


def _missing(live: Exposition, expected: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name}{sorted(labels)}"
        for name, labels in expected.items()
        if name not in live.samples or not labels <= live.samples[name]
    )


@pytest.fixture(scope="session")
def daemon_exposition(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Exposition]:
    """The /metrics of a live daemon (a subprocess on the real broker) that has consumed
    events of two models, good and bad, and acted on an incident; taken once every metric
    it defines has a sample carrying its label names.
    """
    tmp = tmp_path_factory.mktemp("exposition")
    topic = f"exposition-{time.monotonic_ns() % 10**9}"
    port = free_port()
    config = {
        "kafka": kafka_section(broker.bootstrap_servers, topic),
        "http": {"host": "127.0.0.1", "port": port},
        "lifecycle": {"log_format": "json", "grace_period_s": 10},
        "flags": {"type": "flagd_file", "path": str(tmp / "flags.json")},
        "models": EXPOSITION_POLICY,
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    asyncio.run(_produce(broker.bootstrap_servers, topic, _events(600, partitions=2)))
    log_path = tmp / "daemon.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(tmp / "config.yaml")],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    expected = _expected_series()
    missing: list[str] = ["no answer from /metrics"]
    scraped: list[Exposition] = []

    def complete() -> bool:
        nonlocal missing
        if proc.poll() is not None:
            pytest.fail(f"the daemon exited {proc.returncode}; its log ends:\n{log_tail()}")
        text = _scrape(port)
        if text is None:
            return False
        scraped[:] = [parse_exposition(text)]
        missing = _missing(scraped[0], expected)
        return not missing

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-3000:]

    try:
        wait_for_sync(
            complete,
            timeout=60,
            what=lambda: f"the daemon's /metrics to show {missing}; its log ends:\n{log_tail()}",
        )
        yield scraped[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
