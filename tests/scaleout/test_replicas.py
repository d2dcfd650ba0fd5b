"""Several daemon processes in one consumer group on a real broker: a kill -9 and a rolling
restart move partitions with their checkpointed state; every event is applied at least once
and no flag flip or page is repeated (counted at the flag service and the webhook receiver).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from monitor.tools.traffic import ErrorEvents, TrafficGenerator
from tests.conftest import fast_rate_window, wait_for
from tests.core.kafka_helpers import create_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MODELS = [f"m-{i:03d}" for i in range(200)]
INCIDENT_MODELS = ["m-001", "m-077", "m-150"]
PARTITIONS = 12
CHECKPOINTS = "driftwarden_checkpoints_total"
SECRET = "scaleout-test-secret"
#: Events per second of a quiet model (an incident model sends ten times as many).
RATE_PER_MODEL = 8.0
#: The error-rate detector's window (tests.conftest.fast_rate_window).
WINDOW = int(fast_rate_window()["window"])


class Witness:
    """The flag service and the alert webhook: counts every write and every notification."""

    def __init__(self) -> None:
        self.flags: dict[str, Any] = {f"{m}-fallback": False for m in INCIDENT_MODELS}
        self.writes: Counter[tuple[str, Any]] = Counter()
        self.notifications: list[dict[str, Any]] = []
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/flags/{flag}", self._get)
        app.router.add_put("/flags/{flag}", self._put)
        app.router.add_post("/alerts", self._alert)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _get(self, request: web.Request) -> web.Response:
        flag = request.match_info["flag"]
        if flag not in self.flags:
            return web.json_response({"error": "no such flag"}, status=404)
        return web.json_response({"value": self.flags[flag]})

    async def _put(self, request: web.Request) -> web.Response:
        body = await request.json()
        flag = request.match_info["flag"]
        self.flags[flag] = body["value"]
        self.writes[(flag, body["value"])] += 1
        return web.json_response({"ok": True})

    async def _alert(self, request: web.Request) -> web.Response:
        self.notifications.append(await request.json())
        return web.Response(text="ok")

    def summary(self) -> str:
        return ", ".join(f"{n['alert']['model']}:{n['status']}" for n in self.notifications)

    def count(self, model: str, status: str) -> int:
        return sum(
            1 for n in self.notifications if n["status"] == status and n["alert"]["model"] == model
        )


def traffic_of(bootstrap: str, topic: str, sent: list[str]) -> TrafficGenerator:
    """Events of 200 models, ten times as many of the incident models, keyed by model, until
    stopped; an incident model fails 60 % while an ``error_surge`` is begun on it. ``sent``
    receives each acknowledged request id."""
    return TrafficGenerator(
        bootstrap,
        topic,
        rate_per_model=RATE_PER_MODEL,
        models=MODELS,
        script=(),
        seed=3,
        make=ErrorEvents(error_rate=0.0, surge_error_rate=0.6, latency_ms=10.0),
        weights=dict.fromkeys(INCIDENT_MODELS, 10.0),
        observe=lambda body: sent.append(body["request_id"]),
        linger_ms=10,
        client_id="scaleout-traffic",
    )


def model_of(request_id: str) -> str:
    return request_id.rsplit("-", 1)[0]


def config(tmp: Path, broker: EmbeddedBroker, topic: str, witness: Witness, index: int) -> Path:
    incident_policy = {
        m: {
            "mode": "enforce",
            "actions": {
                "degraded": {"flags": {f"{m}-fallback": True}, "alert": {"severity": "page"}}
            },
        }
        for m in INCIDENT_MODELS
    }
    data = {
        "kafka": {
            "bootstrap_servers": broker.bootstrap_servers,
            "topics": [topic],
            "group_id": f"group-{topic}",
            "dead_letter_topic": f"{topic}-dlq",
            "review_topic": f"{topic}-review",
            "auto_offset_reset": "earliest",
            "broker_timeout_s": 5,
            "fetch_timeout_ms": 200,
        },
        "http": {"host": "127.0.0.1", "port": free_port()},
        "lifecycle": {"log_format": "text", "grace_period_s": 15},
        "engine": {"applied_log": str(tmp / f"applied-{index}.txt")},
        "state": {"backend": "kafka", "topic": f"{topic}-state", "interval_s": 1},
        "flags": {
            "type": "http",
            "url": f"http://127.0.0.1:{witness.port}/flags/{{flag}}",
            "get_url": f"http://127.0.0.1:{witness.port}/flags/{{flag}}",
        },
        "alerts": {
            "sinks": [{"type": "webhook", "url": f"http://127.0.0.1:{witness.port}/alerts"}]
        },
        "models": {
            "default": {
                "mode": "enforce",
                "health": {"for": 1, "cooldown": 5, "recover_after": 3},
                "signals": [
                    {
                        "name": "error_rate",
                        "source": "error",
                        "detector": fast_rate_window(),
                        "thresholds": {"degraded": 0.3},
                    }
                ],
                "actions": {"degraded": {"alert": {"severity": "page"}}},
            },
            **incident_policy,
        },
    }
    path = tmp / f"config-{index}.yaml"
    path.write_text(json.dumps(data))
    return path


class Replica:
    def __init__(self, path: Path, tmp: Path, index: int) -> None:
        self.path, self.tmp, self.index = path, tmp, index
        self.port = json.loads(path.read_text())["http"]["port"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.tmp / f"replica-{self.index}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run", "--config", str(self.path)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "DRIFTWARDEN_WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"},
            )

    async def status(self) -> dict[str, Any] | None:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s,
                s.get(f"http://127.0.0.1:{self.port}/status") as r,
            ):
                return dict(await r.json())
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def partitions(self) -> int:
        status = await self.status()
        return len(status["partitions"]) if status else 0

    async def metric(self, name: str) -> float | None:
        """The value of the unlabelled sample ``name`` on /metrics (None: no answer)."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s,
                s.get(f"http://127.0.0.1:{self.port}/metrics") as r,
            ):
                text = await r.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return float(sample.value)
        return None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    async def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, 30)


def applied(tmp: Path) -> set[str]:
    ids: set[str] = set()
    for file in tmp.glob("applied-*.txt"):
        ids.update(line for line in file.read_text().splitlines() if line)
    return ids


@pytest.fixture
async def witness() -> AsyncIterator[Witness]:
    w = Witness()
    await w.start()
    yield w
    await w.stop()


async def run_scenario(
    broker: EmbeddedBroker, tmp: Path, unique: str, witness: Witness, disrupt: str
) -> None:
    topic = f"scale-{unique}"
    await create_topic(broker.bootstrap_servers, topic, partitions=PARTITIONS)
    replicas = [Replica(config(tmp, broker, topic, witness, i), tmp, i) for i in range(3)]
    for replica in replicas:
        replica.start()
    sent: list[str] = []
    traffic = traffic_of(broker.bootstrap_servers, topic, sent)
    try:
        await traffic.start()

        async def spread() -> bool:
            counts = [await r.partitions() for r in replicas]
            return sum(counts) == PARTITIONS and all(counts)

        await wait_for(spread, timeout=60, interval=0.5, what="12 partitions over 3 replicas")
        for model in INCIDENT_MODELS:
            traffic.begin(model, "error_surge")
        await wait_for(
            lambda: all(witness.flags[f"{m}-fallback"] is True for m in INCIDENT_MODELS),
            timeout=40,
            what="every incident flag flipped",
        )
        # A periodic checkpoint after the flips, on every replica, before any disruption: two
        # more saves each (the first may have taken its snapshot before the flips).
        saved = [await r.metric(CHECKPOINTS) or 0.0 for r in replicas]

        async def checkpointed() -> list[float | None]:
            return [await r.metric(CHECKPOINTS) for r in replicas]

        async def checkpointed_after_flips() -> bool:
            now = await checkpointed()
            return all(n is not None and n >= s + 2 for n, s in zip(now, saved, strict=True))

        await wait_for(
            checkpointed_after_flips,
            timeout=20,
            interval=0.2,
            what=lambda: f"two checkpoints per replica after the flips (from {saved})",
        )
        if disrupt == "kill":
            victim = replicas[0]
            disrupted_at = time.monotonic()
            sent_at_disruption = len(sent)
            victim.kill()
            survivors = replicas[1:]

            async def moved() -> bool:
                return sum([await r.partitions() for r in survivors]) == PARTITIONS

            await wait_for(moved, timeout=30, interval=0.5, what="partitions moved")
        else:
            # As a Deployment rolls: one replica at a time, the next once the group is whole.
            survivors = replicas
            steps: list[float] = []
            for replica in replicas:
                disrupted_at = time.monotonic()
                sent_at_disruption = len(sent)
                assert await replica.terminate() == 0
                replica.start()
                # Two rebalances per step (leave, then join): a gross bound, measured below.
                await wait_for(
                    spread,
                    timeout=90,
                    interval=0.5,
                    what=f"group re-formed after restarting replica {replica.index}",
                )
                step_before = set(sent[:sent_at_disruption])
                await wait_for(
                    lambda before=step_before: before <= applied(tmp),  # type: ignore[misc]
                    timeout=60,
                    interval=0.5,
                    what="events produced before the restart applied",
                )
                steps.append(time.monotonic() - disrupted_at)
        moved_after = time.monotonic() - disrupted_at
        if disrupt == "kill":
            # Everything produced up to the kill is applied within 30 s of it.
            produced_before = set(sent[:sent_at_disruption])
            await wait_for(
                lambda: produced_before <= applied(tmp),
                timeout=max(1.0, 30 - (time.monotonic() - disrupted_at)),
                interval=0.5,
                what="events produced before the kill applied in 30 s",
            )
            recovered_after = time.monotonic() - disrupted_at
        else:
            print(
                f"\nrolling restart steps (restart to group whole and caught up): "
                f"{', '.join(f'{s:.1f}s' for s in steps)}"
            )
            recovered_after = max(steps)
        restored = sum([(await r.status() or {}).get("restored_models", 0) for r in survivors])
        # Every model that sent events was checkpointed and is restored by its new owner
        # (the eager rebalance hands every partition over, not only the killed replica's).
        assert restored >= len(MODELS), f"only {restored} models restored from checkpoints"
        # The incident goes on under the new owners, from their restored state: a full window
        # of each incident model's later events applied (a lost state would fire again, which
        # the counts below catch); then it ends and they restore flags and resolve, once.
        mark = len(sent)

        def incident_window_applied() -> bool:
            done = applied(tmp)
            later = Counter(model_of(rid) for rid in sent[mark:] if rid in done)
            return all(later[m] >= WINDOW for m in INCIDENT_MODELS)

        await wait_for(
            incident_window_applied,
            timeout=30,
            interval=0.5,
            what=f"{WINDOW} events of each incident model applied by the new owners",
        )
        for model in INCIDENT_MODELS:
            traffic.end(model, "error_surge")
        await wait_for(
            lambda: all(witness.flags[f"{m}-fallback"] is False for m in INCIDENT_MODELS),
            timeout=40,
            what="every incident flag restored",
        )
        await wait_for(
            lambda: all(witness.count(m, "resolved") >= 1 for m in INCIDENT_MODELS),
            timeout=20,
            what=lambda: f"every incident resolved ({witness.summary()})",
        )
        # The traffic runs until the incident is over everywhere (healthy events drive the
        # recovery); then every event it had acknowledged must be applied.
        await traffic.stop()
        everything = set(sent)
        await wait_for(
            lambda: everything <= applied(tmp),
            timeout=60,
            interval=0.5,
            what="every event applied",
        )
        caught_up = time.monotonic() - disrupted_at
        for model in INCIDENT_MODELS:
            flag = f"{model}-fallback"
            assert witness.writes[(flag, True)] == 1, (flag, witness.writes)
            assert witness.writes[(flag, False)] == 1, (flag, witness.writes)
            assert witness.count(model, "firing") == 1, witness.notifications
            assert witness.count(model, "resolved") == 1, witness.notifications
        quiet = [n for n in witness.notifications if n["alert"]["model"] not in INCIDENT_MODELS]
        assert quiet == []
        print(
            f"\n{disrupt}: partitions moved {moved_after:.1f}s after; {restored} models "
            f"restored from checkpoints; events produced before it all applied "
            f"{recovered_after:.1f}s after; all {len(everything)} events applied by "
            f"{caught_up:.1f}s"
        )
    finally:
        await traffic.stop()
        for replica in replicas:
            if replica.process is not None and replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait(10)


async def test_kill_9_of_one_replica_moves_state_without_repeating_actions(
    broker: EmbeddedBroker, tmp_path: Path, unique: str, witness: Witness
) -> None:
    await run_scenario(broker, tmp_path, unique, witness, "kill")


async def test_rolling_restart_moves_state_without_repeating_actions(
    broker: EmbeddedBroker, tmp_path: Path, unique: str, witness: Witness
) -> None:
    await run_scenario(broker, tmp_path, unique, witness, "rolling")
