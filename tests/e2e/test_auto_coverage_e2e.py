"""Auto coverage live, as a new user runs it: ``driftwarden run`` on a policy that names no
signal, the real Tansu broker, a flagd file and a signed webhook receiver.

The policy is ``models: {default: {mode: enforce}}`` (and one named model that only adds a
flag to its ``degraded`` actions). Traffic: error 1%, then 6%. Each model discovers its
signals from its first events, the error surge takes it to degraded, the receiver gets the
page, the flag flips, and ``/status`` and the audit log say which signals were discovered and
why. A restart in between comes back from its checkpoint watching the same signals. Before
auto coverage such a policy watched nothing: the surge caused no transition at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from alerts.webhook import SIGNATURE_HEADER, verify_signature
from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from monitor.tools.traffic import ErrorEvents, TrafficGenerator
from tests.conftest import kafka_section, wait_for
from tests.core.kafka_helpers import create_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "auto-coverage-secret"
#: ``search`` gets the ``default`` policy as it is; ``pricing`` also sets a flag when degraded.
PLAIN, FLAGGED = "search", "pricing"
FLAG = "pricing-model"


class Receiver:
    """The webhook endpoint: every POST whose signature checks out."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/alerts", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify_signature(SECRET.encode(), body, request.headers[SIGNATURE_HEADER]):
            return web.Response(status=401)
        self.posts.append(json.loads(body))
        return web.Response(text="ok")

    def firing(self, model: str) -> list[dict[str, Any]]:
        return [p for p in self.posts if p["status"] == "firing" and p["alert"]["model"] == model]


def write_config(tmp: Path, bootstrap: str, topic: str, receiver_port: int) -> Path:
    config = {
        "kafka": kafka_section(bootstrap, topic),
        "http": {"host": "127.0.0.1", "port": free_port()},
        "lifecycle": {"log_format": "text", "grace_period_s": 10},
        "state": {"backend": "file", "path": str(tmp / "state"), "interval_s": 1},
        "flags": {"type": "flagd_file", "path": str(tmp / "flags.json")},
        "alerts": {
            "sinks": [{"type": "webhook", "url": f"http://127.0.0.1:{receiver_port}/alerts"}]
        },
        "actions": {"audit_log": str(tmp / "audit.jsonl")},
        "models": {
            # The whole policy of a new user: no signal named.
            "default": {"mode": "enforce"},
            FLAGGED: {
                "mode": "enforce",
                "actions": {"degraded": {"flags": {FLAG: False}, "alert": {"severity": "page"}}},
            },
        },
    }
    path = tmp / "config.yaml"
    path.write_text(json.dumps(config))
    flags = {
        "flags": {
            FLAG: {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "on",
            }
        }
    }
    (tmp / "flags.json").write_text(json.dumps(flags))
    return path


class RunningDaemon:
    """``python -m monitor run --config FILE``, as a user starts it."""

    def __init__(self, config: Path, tmp: Path) -> None:
        self.config = config
        self.log = tmp / "daemon.log"
        self.port = json.loads(config.read_text())["http"]["port"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "DRIFTWARDEN_WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run", "--config", str(self.config)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    async def stop(self) -> int:
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    async def status(self) -> dict[str, Any] | None:
        process = self.process
        if process is not None and process.poll() is not None:
            raise AssertionError(f"daemon exited {process.returncode}:\n{self.tail()}")
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                session.get(f"http://127.0.0.1:{self.port}/status") as response,
            ):
                found: dict[str, Any] = await response.json()
                return found
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None


def audit(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def flag_value(tmp: Path) -> Any:
    definition = json.loads((tmp / "flags.json").read_text())["flags"][FLAG]
    return definition["variants"][definition["defaultVariant"]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    await found.start()
    yield found
    await found.stop()


async def test_minimal_policy_discovers_signals_and_pages_on_an_error_surge(
    broker: EmbeddedBroker, receiver: Receiver, unique: str, tmp_path: Path
) -> None:
    topic = f"auto-{unique}"
    await create_topic(broker.bootstrap_servers, topic, partitions=1)
    daemon = RunningDaemon(
        write_config(tmp_path, broker.bootstrap_servers, topic, receiver.port), tmp_path
    )
    errors = ErrorEvents(error_rate=0.01, scored=True)
    latest: dict[str, Any] = {}

    async def watching() -> bool:
        """Both models past discovery, their error signals past their reference."""
        status = await daemon.status()
        if status is None:
            return False
        latest.update(status)
        models = status["models"]
        return all(
            m in models
            and models[m]["coverage"]["state"] == "watching"
            and models[m]["signals"]["error"]["readings"]["error"]["verdict"] != "inconclusive"
            for m in (PLAIN, FLAGGED)
        )

    async def degraded() -> bool:
        status = await daemon.status()
        if status is None:
            return False
        latest.update(status)
        return all(status["models"].get(m, {}).get("state") == "degraded" for m in (PLAIN, FLAGGED))

    daemon.start()
    try:
        async with TrafficGenerator(
            broker.bootstrap_servers,
            topic,
            rate_per_model=600.0,
            models=(PLAIN, FLAGGED),
            script=(),
            seed=11,
            make=errors,
            linger_ms=5,
            client_id=f"auto-traffic-{unique}",
        ):
            # 1. Discovery, then the reference of every discovered signal: nothing fires.
            await wait_for(watching, timeout=120, what=lambda: f"signals discovered: {latest}")
            for model in (PLAIN, FLAGGED):
                shown = latest["models"][model]
                assert shown["state"] == "ok"
                coverage = shown["coverage"]
                assert coverage["discovers"] is True
                assert coverage["events_observed"] == coverage["discover_events"] == 200
                signals = shown["signals"]
                # What ErrorEvents carries: error, latency, prediction, confidence; no feature.
                assert set(signals) == {"prediction", "confidence", "latency_ms", "error"}
                for name, shown_signal in signals.items():
                    assert shown_signal["origin"] == "discovered", name
                    assert shown_signal["reason"], name
                assert signals["error"]["reason"].startswith("error rate")
                assert signals["latency_ms"]["reason"].endswith("against the model's own baseline")
            entries = [e for e in audit(tmp_path) if e["kind"] == "coverage"]
            assert sorted(e["model"] for e in entries) == [FLAGGED, PLAIN]
            assert {s["name"]: s["origin"] for s in entries[0]["signals"]} == dict.fromkeys(
                ("prediction", "confidence", "latency_ms", "error"), "discovered"
            )
            assert not [e for e in audit(tmp_path) if e["kind"] == "transition"]

            # 2. A restart: the checkpoint brings back the schema, so the same signals, with
            # their state (the error reading is conclusive at once), and no new discovery.
            assert await daemon.stop() == 0
            daemon.start()
            await wait_for(watching, timeout=60, what=lambda: f"restored: {latest}")
            assert set(latest["models"][PLAIN]["signals"]) == set(signals)
            assert len([e for e in audit(tmp_path) if e["kind"] == "coverage"]) == 2

            # 3. The error surge: degraded (after the default `for`), a page each, a flag.
            errors.error_rate = 0.06
            await wait_for(degraded, timeout=150, what=lambda: f"degraded: {latest}")
            await wait_for(
                lambda: receiver.firing(PLAIN) and receiver.firing(FLAGGED),
                timeout=20,
                what="the pages at the receiver",
            )
            await wait_for(
                lambda: flag_value(tmp_path) is False, timeout=20, what=f"{FLAG} turned off"
            )
            page = receiver.firing(PLAIN)[0]
            assert page["alert"]["severity"] == "page"
            assert "error" in page["alert"]["signals"]
            transitions = [e for e in audit(tmp_path) if e["kind"] == "transition"]
            surge = [t for t in transitions if t["to"] == "degraded"]
            assert sorted(t["model"] for t in surge) == [FLAGGED, PLAIN]
            for t in surge:
                assert "error" in [c["signal"] for c in t["causes"]]
        assert await daemon.stop() == 0
    finally:
        daemon.kill()
