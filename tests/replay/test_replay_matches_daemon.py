"""The differential test: one event stream through the live daemon (real Tansu broker, the flagd
file backend, a signed webhook to a local receiver) and through ``driftwarden record`` of the
same topic + ``driftwarden replay`` of the file under the same settings must give identical
transitions, notifications and flag writes.

Timing. Live, the daemon times every event by its receive time; the replay times an event by
its ``ts``, or without one by the broker's record timestamp that ``record`` keeps. The stream is
produced in phases at a steady rate, and a phase ends only once the daemon has reached the
phase's state *and* its effects have landed (flag written, notification received), so the
outcome never depends on how fast the daemon reads. The replay's clock sees the same phases:
a breach starts there no later than live (send time <= receive time) and each ``for`` or
``recover_after`` runs out before the next phase begins in event time. The replay runs with
``--exact`` so it evaluates after every event, as the daemon does after every batch.

Cases: one incident with ``ts`` and one without (broker timestamps), and the walk ok ->
degraded -> critical -> degraded -> ok with degraded and critical both paging (live: four
notifications, one per notified state change, the resolve last).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from alerts.webhook import SIGNATURE_HEADER, verify_signature
from monitor.cli.main import main
from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.flags.flagd_file import FlagdFileBackend
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import fast_rate_window, kafka_section, wait_for
from tests.core.kafka_helpers import create_topic
from tests.fakes.server import serving

pytestmark = pytest.mark.integration

MODEL = "checkout"
VARIANT, ENABLED = "checkout-variant", "checkout-enabled"
#: The flags' values before any incident (in the flagd file): what a restore writes back.
PRIOR: dict[str, Any] = {VARIANT: "model", ENABLED: True}
FOR_S, RECOVER_S = 1.0, 1.0
#: Events per second of the test traffic, and errors per ten events in each state's phase:
#: window rates 0, 0.3 and 0.8 against thresholds degraded 0.2 and critical 0.5, far from both.
RATE = 200.0
ERRORS_PER_TEN = {"ok": 0, "degraded": 3, "critical": 8}
SECRET_ENV = "DIFFERENTIAL_WEBHOOK_SECRET"
SECRET = "differential-test-secret"

INCIDENT = ["degraded", "ok"]
WALK = ["degraded", "critical", "degraded", "ok"]


def policy() -> dict[str, Any]:
    return {
        "mode": "enforce",
        "health": {"for": FOR_S, "cooldown": 0, "recover_after": RECOVER_S},
        "signals": [
            {
                "name": "error_rate",
                "source": "error",
                "detector": fast_rate_window(),
                "thresholds": {"degraded": 0.2, "critical": 0.5},
            }
        ],
        "actions": {
            "degraded": {"flags": {VARIANT: "rules"}, "alert": {"severity": "page"}},
            "critical": {"flags": {ENABLED: False}, "alert": {"severity": "page"}},
        },
    }


class PhasedTraffic:
    """One model's events at a steady rate; ``state`` sets the error pattern (deterministic:
    the first k of every ten events are errors). With ``with_ts`` each event carries its send
    time as ``ts``; without, it carries no time (the broker's timestamp is its only one)."""

    def __init__(self, bootstrap: str, topic: str, *, with_ts: bool) -> None:
        self.bootstrap, self.topic, self.with_ts = bootstrap, topic, with_ts
        self.state = "ok"
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PhasedTraffic:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks=1)
        await self._producer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop producing, with every event sent acknowledged by the broker."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            await self._producer.flush()
            await self._producer.stop()

    async def _run(self) -> None:
        tick = 0.02
        per_tick = max(1, int(RATE * tick))
        while True:
            for _ in range(per_tick):
                body: dict[str, Any] = {
                    "model": MODEL,
                    "request_id": f"{MODEL}-{self.sent}",
                    "latency_ms": 20.0,
                    "error": self.sent % 10 < ERRORS_PER_TEN[self.state],
                }
                if self.with_ts:
                    body["ts"] = time.time()
                await self._producer.send(self.topic, json.dumps(body).encode(), key=MODEL.encode())
                self.sent += 1
            await asyncio.sleep(tick)


@dataclass(slots=True)
class Outcome:
    """What one path did, in order: (from, to, signals), (action, severity, state) and
    (flag, value)."""

    transitions: list[tuple[str, str, tuple[str, ...]]]
    notifications: list[tuple[str, str, str]]
    flag_writes: list[tuple[str, Any]]


@dataclass(slots=True)
class Case:
    #: The states the live daemon was walked through, in order (from ok).
    states: list[str]
    live: Outcome
    replay: Outcome
    replay_summary: dict[str, Any]


def write_settings(tmp_path: Path, broker: EmbeddedBroker, topic: str, hook_url: str) -> Path:
    config = {
        "kafka": kafka_section(broker.bootstrap_servers, topic),
        "http": {"host": "127.0.0.1", "port": free_port()},
        "lifecycle": {"log_format": "text", "grace_period_s": 10},
        "flags": {"type": "flagd_file", "path": str(tmp_path / "flags.json")},
        "alerts": {"sinks": [{"type": "webhook", "url": hook_url, "secret_env": SECRET_ENV}]},
        "actions": {"audit_log": str(tmp_path / "audit.jsonl")},
        "models": {"default": policy()},
    }
    path = tmp_path / "settings.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def live_notifications(bodies: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Webhook documents as (action, severity, state): the first of an incident is its fire,
    a later firing one an update, a resolved one the resolve. A re-send (same idempotency key)
    is one notification. A resolve carries the incident as last fired: its state is given as
    the model's, ``ok``, as the replay reports it."""
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    open_incident = False
    for body in bodies:
        key = body["idempotency_key"]
        if key in seen:
            continue
        seen.add(key)
        alert = body["alert"]
        if body["status"] == "resolved":
            out.append(("resolve", alert["severity"], "ok"))
            open_incident = False
        else:
            out.append(("update" if open_incident else "fire", alert["severity"], alert["state"]))
            open_incident = True
    return out


def live_outcome(tmp_path: Path, bodies: list[dict[str, Any]]) -> Outcome:
    entries = audit(tmp_path)
    transitions = [
        (e["from"], e["to"], tuple(c["signal"] for c in e["causes"]))
        for e in entries
        if e["kind"] == "transition" and e["model"] == MODEL
    ]
    flags = [(e["flag"], e["value"]) for e in entries if e["kind"] == "flag_applied"]
    return Outcome(transitions, live_notifications(bodies), flags)


def replay_outcome(summary: dict[str, Any]) -> Outcome:
    entry = summary["models"][MODEL]
    transitions = [(t["from"], t["to"], tuple(t["signals"])) for t in entry["transitions"]]
    notifications = [(a["action"], a["severity"], a["state"]) for a in entry["alerts"]]
    # A restore writes back the value before the incident, which only the live side can read.
    flags = [
        (f["flag"], f["value"] if f["action"] == "set" else PRIOR[f["flag"]])
        for f in entry["flags"]
    ]
    return Outcome(transitions, notifications, flags)


async def driftwarden(*argv: str) -> None:
    """Run a ``driftwarden`` subcommand, its parser and all, in a thread (``record`` runs its
    own event loop); fail unless it exits 0."""
    code = await asyncio.wait_for(asyncio.to_thread(main, list(argv)), 120)
    assert code == 0, f"driftwarden {argv[0]}: exit {code}"


async def run_case(
    broker: EmbeddedBroker, tmp_path: Path, name: str, states: list[str], *, with_ts: bool
) -> Case:
    topic = f"differential-{name}-{time.monotonic_ns() % 10**9}"
    await create_topic(broker.bootstrap_servers, topic, partitions=1)
    flagd = FlagdFileBackend(tmp_path / "flags.json")
    for flag, value in PRIOR.items():
        await flagd.set(flag, value)
    bodies: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        assert verify_signature(SECRET.encode(), body, request.headers[SIGNATURE_HEADER])
        bodies.append(json.loads(body))
        return web.Response(status=204)

    async with serving(hook) as base_url:
        settings_path = write_settings(tmp_path, broker, topic, f"{base_url}/hook")
        daemon = Daemon(load_settings(settings_path), metrics=Metrics.create(CollectorRegistry()))
        task = asyncio.create_task(daemon.run())
        try:
            async with PhasedTraffic(broker.bootstrap_servers, topic, with_ts=with_ts) as traffic:
                # Healthy traffic first: the window fills, nothing happens.
                await wait_for(lambda: daemon.applied_events >= 300, timeout=30, what="traffic")
                flag_writes = 0
                for state in states:
                    traffic.state = state
                    wanted_flags = flag_writes + 1
                    wanted_notes = len(live_notifications(bodies)) + 1

                    def reached(
                        state: str = state, flags: int = wanted_flags, notes: int = wanted_notes
                    ) -> bool:
                        monitor = daemon.engine.models.get(MODEL)
                        applied = [e for e in audit(tmp_path) if e["kind"] == "flag_applied"]
                        return (
                            monitor is not None
                            and monitor.health.level.label == state
                            and len(applied) >= flags
                            and len(live_notifications(bodies)) >= notes
                        )

                    await wait_for(
                        reached,
                        timeout=30,
                        what=lambda state=state: (
                            f"{state}, its flag write and its notification live; audit: "
                            f"{[e['kind'] for e in audit(tmp_path)]}, webhook: "
                            f"{live_notifications(bodies)}"
                        ),
                    )
                    flag_writes = wanted_flags
                await traffic.stop()
            live = live_outcome(tmp_path, bodies)
        finally:
            daemon.request_stop("test over")
            await asyncio.wait_for(task, 30)

    recording = tmp_path / "recording.jsonl"
    await driftwarden(
        "record", "--bootstrap-servers", broker.bootstrap_servers, "--topic", topic,
        "--out", str(recording), "--idle", "1", "-q",
    )  # fmt: skip
    summary_path = tmp_path / "summary.json"
    await driftwarden(
        "replay", str(recording), "-c", str(settings_path), "--exact", "--summary",
        str(summary_path), "--no-report", "-q",
    )  # fmt: skip
    summary = json.loads(summary_path.read_text())
    assert summary["events"] == traffic.sent and summary["bad_lines"] == 0
    assert summary["warnings"] == []
    return Case(states, live, replay_outcome(summary), summary)


#: Each case's run, shared by its tests (one live run and one replay per case).
_RUNS: dict[str, Case] = {}
_CASES = {
    "with_ts": (INCIDENT, True),
    "without_ts": (INCIDENT, False),
    "walk": (WALK, False),
}


@pytest.fixture
async def case(
    request: pytest.FixtureRequest,
    broker: EmbeddedBroker,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Case:
    name: str = request.param
    if name not in _RUNS:
        monkeypatch.setenv(SECRET_ENV, SECRET)
        states, with_ts = _CASES[name]
        _RUNS[name] = await run_case(
            broker, tmp_path_factory.mktemp(f"differential-{name}"), name, states, with_ts=with_ts
        )
    return _RUNS[name]


@pytest.mark.parametrize("case", list(_CASES), indirect=True)
async def test_replay_reports_the_transitions_the_daemon_made(case: Case) -> None:
    walked = list(zip(["ok", *case.states], case.states, strict=False))
    assert [(f, t) for f, t, _ in case.live.transitions] == walked
    assert case.replay.transitions == case.live.transitions
    clock = case.replay_summary["clock"]
    assert clock["span_s"] > FOR_S


@pytest.mark.parametrize("case", list(_CASES), indirect=True)
async def test_replay_reports_the_flag_writes_the_daemon_made(case: Case) -> None:
    assert len(case.live.flag_writes) == len(case.states)  # one write per state entered
    assert case.replay.flag_writes == case.live.flag_writes


@pytest.mark.parametrize("case", list(_CASES), indirect=True)
async def test_replay_reports_the_notifications_the_daemon_sent(case: Case) -> None:
    # Live: one notification per notified state change (every state here pages), resolve last.
    assert len(case.live.notifications) == len(case.states)
    assert [a for a, _, _ in case.live.notifications] == (
        ["fire"] + ["update"] * (len(case.states) - 2) + ["resolve"]
    )
    assert case.replay.notifications == case.live.notifications
