"""A real Prometheus (Debian `prometheus`) scrapes a live daemon on the real broker and
evaluates the shipped alert rules, time-scaled (a minute of the rules is a second here):
the alerts that should fire do, for real, and the others stay silent; every query of the
Grafana dashboard returns data from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import kafka_section, require_component, wait_for
from tests.core.kafka_helpers import create_topic
from tests.deploy.deploy_helpers import EXPOSITION_POLICY

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "driftwarden.json"
NAMESPACE = "dw"


def scaled_rules() -> dict[str, Any]:
    """The shipped rule file with every duration read as seconds instead of minutes, so
    that 30m windows and 10m `for`s pass within a test."""
    text = yaml.safe_dump(yaml.safe_load(RULES.read_text())["spec"], width=1000)
    text = re.sub(r"\[(\d+)m\]", r"[\1s]", text)
    text = re.sub(r"offset (\d+)m", r"offset \1s", text)
    spec: dict[str, Any] = yaml.safe_load(text)
    for group in spec["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = re.sub(r"^(\d+)m$", r"\1s", str(rule["for"]))
    return spec


def event(model: str, i: int) -> bytes:
    failing = model == "checkout"
    body = {
        "model": model,
        "request_id": f"{model}-{i}",
        "latency_ms": 20.0 + (i % 13 if model != "busy" else 0),
        "error": failing and i % 2 == 0,
        "feedback": 1.0 if model == "busy" else float(i % 3 == 0),
        "features": {"amount": 5.0 if model == "busy" else float(i % 17)},
    }
    return json.dumps(body).encode()


@dataclass
class Stack:
    prometheus: str
    daemon_log: Path

    async def query(self, http: aiohttp.ClientSession, expr: str) -> list[dict[str, Any]]:
        async with http.get(f"{self.prometheus}/api/v1/query", params={"query": expr}) as r:
            body = await r.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def alerts(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        async with http.get(f"{self.prometheus}/api/v1/alerts") as r:
            found: list[dict[str, Any]] = (await r.json())["data"]["alerts"]
        return found


def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def prometheus_binary() -> Iterator[str]:
    found = shutil.which("prometheus")
    require_component(found is not None, "prometheus (Debian package prometheus)")
    assert found is not None
    yield found


async def _traffic(bootstrap: str, topic: str, stop: asyncio.Event) -> None:
    """``busy`` (steady, healthy: its signals hold still once windows are full) and
    ``checkout`` (failing) keep publishing; ``search`` published once, at the start."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        i = 0
        while not stop.is_set():
            for model in ("busy", "checkout"):
                for _ in range(20):
                    await producer.send(topic, event(model, i), key=model.encode())
                    i += 1
            await producer.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    finally:
        await producer.stop()


@pytest.fixture
async def stack(
    broker: EmbeddedBroker, prometheus_binary: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    topic = f"prom-{time.monotonic_ns() % 10**9}"
    await create_topic(broker.bootstrap_servers, topic, partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for i in range(200):
            await producer.send(topic, event("search", i), key=b"search")
        await producer.send(topic, b"not json", key=b"search")  # the dead-letter series
        await producer.flush()
    finally:
        await producer.stop()

    daemon_port, prom_port = free_port(), free_port()
    config = {
        "kafka": kafka_section(broker.bootstrap_servers, topic),
        "http": {"host": "127.0.0.1", "port": daemon_port},
        "lifecycle": {"log_format": "json", "grace_period_s": 10},
        "flags": {"type": "flagd_file", "path": str(tmp_path / "flags.json")},
        # Nothing listens there: the sink fails, DriftwardenAlertSinkDown must fire.
        "alerts": {
            "sinks": [
                {"type": "console"},
                {"type": "alertmanager", "url": f"http://127.0.0.1:{free_port()}", "timeout_s": 1},
            ]
        },
        "actions": {"audit_log": str(tmp_path / "audit.jsonl")},
        "state": {"backend": "file", "path": str(tmp_path / "state"), "interval_s": 1},
        "models": EXPOSITION_POLICY,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(scaled_rules(), width=1000))
    prom_config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "scrape_configs": [
            {
                # What the ServiceMonitor gives the rules: job, namespace and pod labels.
                "job_name": "driftwarden",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{daemon_port}"],
                        "labels": {"namespace": NAMESPACE, "pod": "driftwarden-0"},
                    }
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(prom_config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTWARDEN_")}
    env["PYTHONPATH"] = str(REPO)
    daemon = _start(
        [sys.executable, "-m", "monitor", "run", "--config", str(tmp_path / "config.yaml")],
        tmp_path / "daemon.log",
        env,
    )
    prometheus = _start(
        [
            prometheus_binary,
            f"--config.file={tmp_path / 'prometheus.yaml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        tmp_path / "prometheus.log",
    )
    stop = asyncio.Event()
    traffic = asyncio.create_task(_traffic(broker.bootstrap_servers, topic, stop))
    try:
        yield Stack(f"http://127.0.0.1:{prom_port}", tmp_path / "daemon.log")
    finally:
        stop.set()
        await asyncio.gather(traffic, return_exceptions=True)
        _stop(prometheus)
        _stop(daemon)


def _firing(alerts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {
        (a["labels"]["alertname"], a["labels"].get("model") or a["labels"].get("sink") or "")
        for a in alerts
        if a["state"] == "firing"
    }


#: Shipped rules this scenario must leave silent (nothing lags, one bad record in many,
#: flags write, checkpoints succeed, the replica is up).
SILENT = {
    "DriftwardenConsumerLagGrowing",
    "DriftwardenDeadLetterRateHigh",
    "DriftwardenFlagBackendDown",
    "DriftwardenCheckpointFailing",
    "DriftwardenReplicaNotReady",
}
EXPECTED = {
    ("DriftwardenModelNoEvents", "search"),  # published once, then nothing
    ("DriftwardenAlertSinkDown", "alertmanager"),
}


async def test_shipped_rules_fire_for_real_and_the_dashboard_has_data(stack: Stack) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

        async def up() -> bool:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, AssertionError):
                return bool(await stack.query(http, 'up{job="driftwarden"} == 1'))
            return False

        await wait_for(up, timeout=120, interval=0.5, what="Prometheus scraping the daemon")
        rule_names = {r["alert"] for g in scaled_rules()["groups"] for r in g["rules"]}
        assert SILENT | {name for name, _ in EXPECTED} <= rule_names

        seen: set[tuple[str, str]] = set()

        async def expected_fire() -> bool:
            seen.update(_firing(await stack.alerts(http)))
            return seen >= EXPECTED

        await wait_for(
            expected_fire,
            timeout=240,
            interval=1.0,
            what=lambda: f"alerts {sorted(EXPECTED)} firing; seen {sorted(seen)}",
        )
        alerts = await stack.alerts(http)
        seen |= _firing(alerts)
        # busy keeps publishing while its signals hold steady: no "no events" for it, nor
        # for checkout; the rules that have nothing to say stay silent.
        assert ("DriftwardenModelNoEvents", "busy") not in seen
        assert ("DriftwardenModelNoEvents", "checkout") not in seen
        assert not [s for s in seen if s[0] in SILENT], seen
        for alert in alerts:
            if alert["labels"]["alertname"] in {name for name, _ in EXPECTED}:
                runbook = alert["annotations"]["runbook_url"]
                assert runbook.endswith(f"/{alert['labels']['alertname']}.md"), runbook

        # Every dashboard query returns data, with the variables at "All".
        dashboard = json.loads(DASHBOARD.read_text())
        empty = []
        for expr in _dashboard_queries(dashboard["panels"]):
            concrete = (
                expr.replace("$namespace", NAMESPACE)
                .replace("$model", ".*")
                .replace("$signal", ".*")
                .replace("$__rate_interval", "15s")
                .replace("$__range", "5m")
            )
            if not await stack.query(http, concrete):
                empty.append(concrete)
        assert empty == [], f"{len(empty)} dashboard queries return no data: {empty}"

        # Effect sizes: finite, or no series at all.
        effects = await stack.query(http, "driftwarden_signal_effect_size")
        assert effects
        assert all(math.isfinite(float(s["value"][1])) for s in effects), effects


def _dashboard_queries(panels: list[dict[str, Any]]) -> Iterator[str]:
    for panel in panels:
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield str(target["expr"])
        yield from _dashboard_queries(panel.get("panels", []))
