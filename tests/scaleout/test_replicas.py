"""Several daemon processes in one consumer group on a real broker: a kill -9 and a rolling
restart move partitions with their checkpointed state; every event is applied at least once
and no flag flip or page is repeated (counted at the flag service and the webhook receiver).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
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
from aiokafka import AIOKafkaProducer

from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import fast_rate_window, wait_for
from tests.core.kafka_helpers import create_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MODELS = [f"m-{i:03d}" for i in range(200)]
INCIDENT_MODELS = ["m-001", "m-077", "m-150"]
PARTITIONS = 12
SECRET = "scaleout-test-secret"


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


class Traffic:
    """Events of 200 models, keyed by model; incident models fail 60 % while ``incident``."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.incident = False
        self.sent: list[str] = []
        self._random = random.Random(3)

    async def run(self, seconds: float) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=10)
        await producer.start()
        try:
            end = time.monotonic() + seconds
            n = 0
            while time.monotonic() < end:
                for model in MODELS:
                    repeat = 10 if model in INCIDENT_MODELS else 1
                    for _ in range(repeat):
                        failing = (
                            self.incident
                            and model in INCIDENT_MODELS
                            and self._random.random() < 0.6
                        )
                        rid = f"{model}-{n}"
                        n += 1
                        body = {
                            "model": model,
                            "request_id": rid,
                            "error": failing,
                            "latency_ms": 10.0,
                        }
                        await producer.send(
                            self.topic, json.dumps(body).encode(), key=model.encode()
                        )
                        self.sent.append(rid)
                await asyncio.sleep(0.1)
            await producer.flush()
        finally:
            await producer.stop()


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
    traffic = Traffic(broker.bootstrap_servers, topic)
    producing = asyncio.create_task(traffic.run(60))
    try:

        async def spread() -> bool:
            counts = [await r.partitions() for r in replicas]
            return sum(counts) == PARTITIONS and all(counts)

        await wait_for(spread, timeout=60, interval=0.5, what="12 partitions over 3 replicas")
        traffic.incident = True
        await wait_for(
            lambda: all(witness.flags[f"{m}-fallback"] is True for m in INCIDENT_MODELS),
            timeout=40,
            what="every incident flag flipped",
        )
        await asyncio.sleep(2)  # let a periodic checkpoint follow the flips
        if disrupt == "kill":
            victim = replicas[0]
            disrupted_at = time.monotonic()
            sent_at_disruption = len(traffic.sent)
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
                sent_at_disruption = len(traffic.sent)
                assert await replica.terminate() == 0
                replica.start()
                # Two rebalances per step (leave, then join): a gross bound, measured below.
                await wait_for(
                    spread,
                    timeout=90,
                    interval=0.5,
                    what=f"group re-formed after restarting replica {replica.index}",
                )
                step_before = set(traffic.sent[:sent_at_disruption])
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
            produced_before = set(traffic.sent[:sent_at_disruption])
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
        # The incident goes on, then ends: the new owners restore flags and resolve, once.
        await asyncio.sleep(3)
        traffic.incident = False
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
        await producing
        sent = set(traffic.sent)
        await wait_for(
            lambda: sent <= applied(tmp), timeout=60, interval=0.5, what="every event applied"
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
            f"{recovered_after:.1f}s after; all {len(sent)} events applied by "
            f"{caught_up:.1f}s"
        )
    finally:
        producing.cancel()
        await asyncio.gather(producing, return_exceptions=True)
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
