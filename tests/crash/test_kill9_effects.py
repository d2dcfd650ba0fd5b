"""kill -9 at the delicate points of the effect path, on the real broker: after a restart the
incident ends with exactly-once effects.

Each case runs a `driftwarden run` subprocess (Tansu broker, file checkpoint store, a flagd file
backend, a webhook sink to a local aiohttp receiver) with ``DRIFTWARDEN_FAILPOINT=point:nth``,
so it SIGKILLs itself there; the test restarts it (sometimes armed again, to kill it during its
restore) and drives one incident through degraded -> critical -> degraded -> ok. It then
asserts, at the flag file (every value change, polled) and at the receiver (every POST):
each flag went to each incident value once and back to its pre-incident value once, and the
receiver saw exactly one notification per state change (deduplicated by idempotency key,
which the webhook sends with every attempt), the resolve last.

Cases share one broker and run a few at a time (each its own topic and files); a module
fixture runs them all and the parametrized tests check one case each.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from alerts.webhook import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify_signature
from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from monitor.tools.traffic import TrafficGenerator
from tests.core.kafka_helpers import create_topic

# The module fixture runs every case (the first test's setup): its timeout covers them all.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "crash-test-secret"
MODEL, BYSTANDER = "pricing", "search"
PRE_INCIDENT = {"mode": "model", "enabled": True}
#: (flag, value) changes the incident must cause, in order, each exactly once.
EXPECTED_CHANGES = {"mode": ["rules", "off", "rules", "model"], "enabled": [False, True]}
#: The notifications of the incident, in order: (status, state).
EXPECTED_NOTIFICATIONS = [
    ("firing", "degraded"),
    ("firing", "critical"),
    ("firing", "degraded"),
    ("resolved", "degraded"),
]
#: Errors per 20 events in each phase: deterministic rates, no random dips near a threshold.
PHASES = [("healthy", 0), ("degraded", 7), ("critical", 18), ("back", 7), ("recover", 0)]
#: Cases at a time: each mostly waits (group joins, ``for``, ``recover_after``), so more of
#: them than cores keeps the run short.
CONCURRENCY = int(os.environ.get("DRIFTWARDEN_CRASH_CONCURRENCY", "10"))

#: (point, nth, point armed for the restart or None). Writes in order: mode=rules (1);
#: mode=off, enabled=False (2, 3); mode=rules, enabled restored (4, 5); mode restored (6).
#: Notifications: fire degraded (1), fire critical (2), fire degraded (3), resolve (4).
#: Transitions: ok->degraded (1), ->critical (2), ->degraded (3), ->ok (4).
CASES: list[tuple[str, int, str | None]] = [
    ("transition.decided", 1, None),
    ("transition.decided", 2, None),
    ("transition.decided", 3, None),
    ("transition.decided", 4, None),
    ("transition.saved", 1, None),
    ("transition.saved", 2, None),
    ("transition.saved", 4, None),
    ("transition.dispatched", 1, None),
    ("batch.between_models", 1, None),
    ("flag.prior_read", 1, None),
    ("flag.prior_saved", 1, None),
    ("flag.prior_saved", 2, None),
    ("flag.before_write", 1, None),
    ("flag.written", 1, None),
    ("flag.written", 3, None),
    ("flag.written", 5, None),
    ("flag.restore_requested", 1, None),
    ("flag.restore_requested", 2, None),
    ("flag.written", 6, None),
    ("alert.before_send", 1, None),
    ("alert.delivered", 1, None),
    ("alert.before_send", 4, None),
    ("alert.delivered", 4, None),
    ("checkpoint.saved", 3, None),
    ("commit.before", 4, None),
    ("commit.after", 4, None),
    ("flag.written", 1, "restore.resumed:1"),
    ("transition.saved", 2, "restore.loaded:1"),
]


#: Cases whose checkpoints go to a compacted topic on the broker (state.backend kafka); the
#: others use a directory (state.backend file).
KAFKA_STATE = {
    "flag.written:3",
    "alert.delivered:1",
    "commit.before:4",
    "transition.saved:2+restore.loaded:1",
}


def case_id(case: tuple[str, int, str | None]) -> str:
    point, nth, then = case
    return f"{point}:{nth}" + (f"+{then}" if then else "")


class Receiver:
    """The webhook endpoint: keeps every POST (checked signature) with its idempotency key."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/alerts", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify_signature(SECRET.encode(), body, request.headers[SIGNATURE_HEADER]):
            return web.Response(status=401)
        document = json.loads(body)
        document["header_key"] = request.headers.get(IDEMPOTENCY_HEADER)
        self.posts.append(document)
        return web.Response(text="ok")

    def model_posts(self) -> list[dict[str, Any]]:
        return [p for p in self.posts if p["alert"]["model"] == MODEL]

    def deduplicated(self) -> list[tuple[str, str]]:
        """(status, state) of each distinct notification, in the order first received."""
        seen: dict[str, tuple[str, str]] = {}
        for post in self.model_posts():
            seen.setdefault(post["idempotency_key"], (post["status"], post["alert"]["state"]))
        return list(seen.values())


class FlagWatch:
    """Polls the flagd file and records every change of each flag's value."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = dict(PRE_INCIDENT)
        self.changes: dict[str, list[Any]] = {flag: [] for flag in PRE_INCIDENT}

    def poll(self) -> None:
        try:
            flags = json.loads(self.path.read_text())["flags"]
        except (OSError, ValueError):
            return  # the atomic rename makes this rare; the next poll reads it
        for flag, definition in flags.items():
            if flag not in self.current:
                continue
            value = definition["variants"][definition["defaultVariant"]]
            if value != self.current[flag] or type(value) is not type(self.current[flag]):
                self.changes[flag].append(value)
                self.current[flag] = value


@dataclass
class Outcome:
    case: str
    kills: list[str] = field(default_factory=list)
    changes: dict[str, list[Any]] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    notifications: list[tuple[str, str]] = field(default_factory=list)
    posts: int = 0
    keys_match: bool = True
    exit_code: int | None = None
    error: str | None = None
    log: str = ""


def write_config(
    tmp: Path, broker: EmbeddedBroker, topic: str, receiver: Receiver, state_backend: str
) -> Path:
    state: dict[str, Any] = {"backend": state_backend, "interval_s": 1}
    if state_backend == "kafka":
        state["topic"] = f"{topic}-state"
    else:
        state["path"] = str(tmp / "state")
    data = {
        "kafka": {
            "bootstrap_servers": broker.bootstrap_servers,
            "topics": [topic],
            "group_id": f"g-{topic}",
            "dead_letter_topic": f"{topic}-dlq",
            "review_topic": f"{topic}-review",
            "auto_offset_reset": "earliest",
            "broker_timeout_s": 5,
            "fetch_timeout_ms": 100,
        },
        "http": {"host": "127.0.0.1", "port": free_port()},
        "lifecycle": {"log_format": "text", "grace_period_s": 10},
        "state": state,
        "flags": {"type": "flagd_file", "path": str(tmp / "flags.json")},
        "alerts": {
            "sinks": [{"type": "webhook", "url": f"http://127.0.0.1:{receiver.port}/alerts"}]
        },
        "actions": {"audit_log": str(tmp / "audit.jsonl")},
        "models": {
            "default": {
                "mode": "enforce",
                "health": {"for": 0.5, "cooldown": 1.0, "recover_after": 1.5},
                "signals": [
                    {
                        "name": "error_rate",
                        "source": "error",
                        "detector": {
                            "type": "rate_window",
                            "window": 100,
                            "min_samples": 50,
                            "stride": 10,
                            "persist": 0,
                        },
                        "thresholds": {"degraded": 0.2, "critical": 0.6},
                    }
                ],
                "actions": {
                    "degraded": {"flags": {"mode": "rules"}, "alert": {"severity": "page"}},
                    "critical": {
                        "flags": {"mode": "off", "enabled": False},
                        "alert": {"severity": "critical"},
                    },
                },
            }
        },
    }
    path = tmp / "config.yaml"
    path.write_text(json.dumps(data))
    (tmp / "flags.json").write_text(
        json.dumps(
            {
                "flags": {
                    "mode": {
                        "state": "ENABLED",
                        "variants": {"model": "model", "rules": "rules", "off": "off"},
                        "defaultVariant": "model",
                    },
                    "enabled": {
                        "state": "ENABLED",
                        "variants": {"on": True, "off": False},
                        "defaultVariant": "on",
                    },
                }
            }
        )
    )
    return path


class Daemon:
    def __init__(self, config: Path, tmp: Path) -> None:
        self.config, self.tmp = config, tmp
        self.port = json.loads(config.read_text())["http"]["port"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, failpoint: str | None) -> None:
        env = {**os.environ, "DRIFTWARDEN_WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        env.pop("DRIFTWARDEN_FAILPOINT", None)
        if failpoint is not None:
            env["DRIFTWARDEN_FAILPOINT"] = failpoint
        with (self.tmp / "daemon.log").open("ab") as log:
            log.write(f"--- start, failpoint {failpoint}\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run", "--config", str(self.config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    async def applied_events(self) -> int:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s,
                s.get(f"http://127.0.0.1:{self.port}/status") as r,
            ):
                return int((await r.json())["applied_events"])
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            return 0

    def log_tail(self, lines: int = 40) -> str:
        path = self.tmp / "daemon.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class PhaseEvents:
    """MODEL's events with ``phase[0]`` errors in every 20 (by its own count), the bystander's
    all healthy: the event content of the shared generator's traffic (``traffic_of``)."""

    def __init__(self, phase: list[int]) -> None:
        self.phase = phase
        self.count: dict[str, int] = {}

    def __call__(
        self, model: str, i: int, kinds: frozenset[str], rng: random.Random
    ) -> dict[str, Any]:
        n = self.count.get(model, 0)
        self.count[model] = n + 1
        error = model == MODEL and n % 20 < self.phase[0]
        return {"model": model, "request_id": f"{model}-{n}", "error": error}


def traffic_of(bootstrap: str, topic: str, phase: list[int]) -> TrafficGenerator:
    """200 events/s of MODEL with ``phase[0]`` errors in every 20, and 50/s of a healthy
    bystander."""
    return TrafficGenerator(
        bootstrap,
        topic,
        rate_per_model=50.0,
        models=(MODEL, BYSTANDER),
        script=(),
        make=PhaseEvents(phase),
        weights={MODEL: 4.0},
        linger_ms=5,
        client_id=f"crash-traffic-{topic}",
    )


async def run_case(
    case: tuple[str, int, str | None],
    broker: EmbeddedBroker,
    tmp: Path,
    timeout_s: float = 150.0,
) -> Outcome:
    point, nth, then = case
    outcome = Outcome(case_id(case))
    topic = (
        f"crash-{outcome.case.replace(':', '-').replace('+', '-')}-{time.monotonic_ns() % 10**9}"
    )
    await create_topic(broker.bootstrap_servers, topic, partitions=1)
    receiver = Receiver()
    await receiver.start()
    watch = FlagWatch(tmp / "flags.json")
    backend = "kafka" if outcome.case in KAFKA_STATE else "file"
    daemon = Daemon(write_config(tmp, broker, topic, receiver, backend), tmp)
    armed = [f"{point}:{nth}", *([then] if then else [])]
    phase_index = 0
    phase = [PHASES[0][1]]
    traffic = traffic_of(broker.bootstrap_servers, topic, phase)
    deadline = time.monotonic() + timeout_s
    last_status = 0.0
    try:
        await traffic.start()
        daemon.start(armed.pop(0))
        while True:
            await asyncio.sleep(0.01)
            watch.poll()
            process = daemon.process
            assert process is not None
            code = process.poll()
            if code is not None:
                if code != -signal.SIGKILL:
                    raise RuntimeError(f"daemon exited with {code}")
                outcome.kills.append(f"killed ({len(outcome.kills) + 1})")
                daemon.start(armed.pop(0) if armed else None)
                continue
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"incident not over in {timeout_s:.0f}s: phase {PHASES[phase_index][0]}, "
                    f"flags {watch.current}, notifications {receiver.deduplicated()}"
                )
            name = PHASES[phase_index][0]
            current = watch.current
            advance = False
            if name == "healthy":
                if time.monotonic() - last_status > 0.5:
                    last_status = time.monotonic()
                    advance = await daemon.applied_events() >= 150
            elif name == "degraded":
                advance = current["mode"] == "rules"
            elif name == "critical":
                advance = current["mode"] == "off" and current["enabled"] is False
            elif name == "back":
                advance = current["mode"] == "rules" and current["enabled"] is True
            elif name == "recover":
                notes = receiver.deduplicated()
                # Over only once the armed kills happened and the last start has restored
                # and applies events: a kill after the last effect still needs its restart.
                restarted = not armed and len(outcome.kills) == 1 + (then is not None)
                over = current == PRE_INCIDENT and bool(notes) and notes[-1][0] == "resolved"
                if over and restarted and time.monotonic() - last_status > 0.5:
                    last_status = time.monotonic()
                    if await daemon.applied_events() > 0:
                        break
            if advance:
                phase_index += 1
                phase[0] = PHASES[phase_index][1]
        # The incident is over: a graceful stop must flush, and change nothing more.
        process = daemon.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        outcome.exit_code = await asyncio.to_thread(process.wait, 30)
        watch.poll()
    except Exception as err:
        outcome.error = repr(err)
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            await asyncio.to_thread(daemon.process.wait, 10)
    finally:
        await traffic.stop()
        await receiver.stop()
    outcome.changes = watch.changes
    outcome.final = watch.current
    outcome.notifications = receiver.deduplicated()
    outcome.posts = len(receiver.model_posts())
    posts = receiver.model_posts()

    def content(post: dict[str, Any]) -> str:
        return json.dumps({"status": post["status"], "alert": post["alert"]}, sort_keys=True)

    # A key names one notification: every attempt with it says exactly the same thing.
    outcome.keys_match = all(
        p["header_key"] == p["idempotency_key"] is not None for p in posts
    ) and all(
        len({content(p) for p in posts if p["idempotency_key"] == key}) == 1
        for key in {p["idempotency_key"] for p in posts}
    )
    log_text = (tmp / "daemon.log").read_text(errors="replace")
    outcome.log = daemon.log_tail()
    reached = [line for line in log_text.splitlines() if "failpoint" in line and "reached" in line]
    outcome.kills = [line.split("failpoint ", 1)[1].split(" reached")[0] for line in reached]
    return outcome


@pytest.fixture(scope="module")
def outcomes(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Outcome]:
    """Run every case, CONCURRENCY at a time; print the table the report quotes."""
    base = tmp_path_factory.mktemp("crash")

    async def run_all() -> dict[str, Outcome]:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(index: int, case: tuple[str, int, str | None]) -> Outcome:
            async with gate:
                tmp = base / f"case-{index:02d}"
                await asyncio.to_thread(tmp.mkdir)
                return await run_case(case, broker, tmp)

        # Debugging aid: DRIFTWARDEN_CRASH_ONLY=id,id runs those cases only (select the same
        # ones with -k); the others then fail for want of an outcome.
        only = {x for x in os.environ.get("DRIFTWARDEN_CRASH_ONLY", "").split(",") if x}
        chosen = [c for c in CASES if not only or case_id(c) in only]
        results = await asyncio.gather(*(one(i, c) for i, c in enumerate(chosen)))
        return {r.case: r for r in results}

    started = time.monotonic()
    results = asyncio.run(run_all())
    print(f"\n{len(results)} kill cases in {time.monotonic() - started:.0f}s")
    print("| point:nth | state | kills | pages (posts) | mode changes | enabled changes | final |")
    for r in results.values():
        backend = "kafka" if r.case in KAFKA_STATE else "file"
        print(
            f"| {r.case} | {backend} | {', '.join(r.kills)} | {len(r.notifications)} ({r.posts}) | "
            f"{r.changes.get('mode')} | {r.changes.get('enabled')} | {r.final} |"
        )
    return results


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kill9_then_restart_gives_exactly_once_effects(
    outcomes: dict[str, Outcome], case: tuple[str, int, str | None]
) -> None:
    r = outcomes[case_id(case)]
    context = f"{r.case}: {r.error}\n{r.log}"
    assert r.error is None, context
    point, nth, then = case
    # The kill happened where it was asked to (else the case proves nothing).
    assert r.kills[:1] == [f"{point}:{nth}"], context
    if then is not None:
        assert r.kills[1:] == [then], context
    assert r.exit_code == 0, context
    assert r.changes == EXPECTED_CHANGES, context
    assert r.final == PRE_INCIDENT, context
    assert r.notifications == EXPECTED_NOTIFICATIONS, context
    # Every attempt carried its key in the header and the body; one key is one notification.
    assert r.keys_match, context
