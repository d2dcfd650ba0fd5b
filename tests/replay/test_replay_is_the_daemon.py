"""The replay reports what the daemon does: the same transition walks, fed to the daemon's
Actions (real AlertDispatcher with a recording sink, real FlagActuator over an in-memory
backend) and to the replay's ModelTrail, give identical notification sequences and flag writes.

Generated walks over the levels with policies alerting and flipping flags on some levels; the
end-to-end differential test on the real broker lives elsewhere, this one is the exhaustive one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from alerts.dispatcher import AlertDispatcher
from monitor.actions.actions import Actions, AuditLog
from monitor.config.policy import Level, ModelPolicy
from monitor.engine.health import Cause, Transition
from monitor.flags.actuator import FlagActuator
from monitor.flags.base import FlagValue
from monitor.observability.metrics import Metrics
from monitor.tools.replay import ModelTrail
from tests.alerts.test_alert_dispatcher import RecordingSink
from tests.conftest import wait_for

MODEL = "m"
FLAGS = ("variant", "enabled", "review")
#: Every flag's value before any incident: what a restore writes back.
PRIOR = "prior"
SIGNALS = ("error_rate", "latency_p99", "psi")

#: (level, signals) steps; the walk starts at ok.
Walk = list[tuple[Level, tuple[str, ...]]]


class MemoryFlags:
    """A flag backend in memory that records every write in order."""

    name = "memory"

    def __init__(self) -> None:
        self.values: dict[str, FlagValue] = dict.fromkeys(FLAGS, PRIOR)
        self.writes: list[tuple[str, FlagValue]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def get(self, flag: str) -> FlagValue | None:
        return self.values.get(flag)

    async def set(self, flag: str, value: FlagValue) -> None:
        self.values[flag] = value
        self.writes.append((flag, value))


def transitions(walk: Walk) -> list[Transition]:
    out = []
    level = Level.OK
    for k, (to, signals) in enumerate(walk):
        causes = tuple(Cause(s, to, 0.5 + k, 0.1, 1.0, 3.0) for s in signals)
        out.append(Transition(MODEL, level, to, 1_700_000_000.0 + 10.0 * k, causes))
        level = to
    return out


async def daemon_side(policy: ModelPolicy, walk: Walk) -> tuple[list[Any], list[Any]]:
    """Notifications the sink got (status, state, severity, signals) and flag writes."""
    metrics = Metrics.create(CollectorRegistry())
    backend = MemoryFlags()
    sink = RecordingSink()
    actions = Actions(
        metrics,
        AuditLog(None),
        policy_for=lambda model: policy,
        actuator=FlagActuator(backend, metrics, initial_backoff_s=0.01),
        dispatcher=AlertDispatcher([sink], metrics, initial_backoff_s=0.01, max_backoff_s=0.05),
    )
    await actions.start()
    try:
        for t in transitions(walk):
            actions.decide([t], t.at)
            actions.dispatch()
            # Live, transitions are seconds apart: each one's effects are out before the next.

            def settled() -> bool:
                effects = actions.effects.get(MODEL)
                assert actions.actuator is not None and actions.dispatcher is not None
                return (
                    (effects is None or not (effects.plans or effects.writing or effects.outbox))
                    and not actions.actuator.pending()
                    and actions.dispatcher.queue_depth(sink.name) == 0
                )

            await wait_for(settled, interval=0.002, what="the transition's effects carried out")
    finally:
        await actions.stop(flush_timeout_s=1.0)
    notified = [
        (status, a.severity) if status == "resolved" else (status, a.state, a.severity, a.signals)
        for status, a in sink.received
    ]
    return notified, backend.writes


def replay_side(policy: ModelPolicy, walk: Walk) -> tuple[list[Any], list[Any], list[str]]:
    trail = ModelTrail(MODEL, policy)
    for k, t in enumerate(transitions(walk)):
        trail.record(t, k)
    notified = [
        ("resolved", a["severity"])
        if a["action"] == "resolve"
        else ("firing", a["state"], a["severity"], tuple(a["signals"]))
        for a in trail.alerts
    ]
    writes = [(f["flag"], f["value"] if f["action"] == "set" else PRIOR) for f in trail.flags]
    return notified, writes, [a["action"] for a in trail.alerts]


level_actions = st.fixed_dictionaries(
    {},
    optional={
        "flags": st.dictionaries(
            st.sampled_from(FLAGS), st.sampled_from(["rules", "off", True, False]), max_size=2
        ),
        "alert": st.fixed_dictionaries(
            {"severity": st.sampled_from(["info", "warning", "page", "critical"])}
        ),
    },
)
policies = st.fixed_dictionaries(
    {},
    optional={
        "warn": level_actions,
        "degraded": level_actions,
        "critical": level_actions,
    },
).map(lambda actions: ModelPolicy.model_validate({"actions": actions}))


@st.composite
def walks(draw: st.DrawFn) -> Walk:
    walk: Walk = []
    level = Level.OK
    for _ in range(draw(st.integers(1, 9))):
        to = draw(st.sampled_from([lvl for lvl in Level if lvl is not level]))
        signals: tuple[str, ...] = ()
        if to is not Level.OK:
            signals = tuple(draw(st.lists(st.sampled_from(SIGNALS), min_size=1, unique=True)))
        walk.append((to, signals))
        level = to
    if level is not Level.OK and draw(st.booleans()):
        walk.append((Level.OK, ()))
    return walk


BOTH_PAGE = ModelPolicy.model_validate(
    {
        "actions": {
            "degraded": {"flags": {"variant": "rules"}, "alert": {"severity": "page"}},
            "critical": {"flags": {"enabled": False}, "alert": {"severity": "page"}},
        }
    }
)
#: The walk of issue 14: ok -> degraded -> critical -> degraded -> ok on the error rate.
ISSUE_WALK: Walk = [
    (Level.DEGRADED, ("error_rate",)),
    (Level.CRITICAL, ("error_rate",)),
    (Level.DEGRADED, ("error_rate",)),
    (Level.OK, ()),
]


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@example(policy=BOTH_PAGE, walk=ISSUE_WALK)
@given(policy=policies, walk=walks())
def test_daemon_actions_and_replay_trail_notify_and_write_flags_alike(
    policy: ModelPolicy, walk: Walk
) -> None:
    live_notified, live_writes = asyncio.run(daemon_side(policy, walk))
    replay_notified, replay_writes, actions = replay_side(policy, walk)
    assert replay_notified == live_notified
    assert replay_writes == live_writes
    # An incident's notifications: one fire first, updates, and a resolve only last.
    for k, action in enumerate(actions):
        opened = k > 0 and actions[k - 1] != "resolve"
        assert action in (("update", "resolve") if opened else ("fire",))


def test_the_issue_walk_notifies_four_times_live_and_in_replay() -> None:
    live_notified, live_writes = asyncio.run(daemon_side(BOTH_PAGE, ISSUE_WALK))
    replay_notified, replay_writes, actions = replay_side(BOTH_PAGE, ISSUE_WALK)
    assert actions == ["fire", "update", "update", "resolve"]
    assert (
        replay_notified
        == live_notified
        == [
            ("firing", "degraded", "page", ("error_rate",)),
            ("firing", "critical", "page", ("error_rate",)),
            ("firing", "degraded", "page", ("error_rate",)),
            ("resolved", "page"),
        ]
    )
    assert (
        replay_writes
        == live_writes
        == [
            ("variant", "rules"),
            ("enabled", False),
            ("enabled", PRIOR),
            ("variant", PRIOR),
        ]
    )
