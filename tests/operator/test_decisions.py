"""The decision core on its own: flag intents over whole walks, the incident rule shared with
the dispatcher, silences, and review sampling with an injected random source."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from alerts.base import Alert
from alerts.dispatcher import AlertDispatcher
from alerts.incidents import Notification, news
from monitor.actions.decisions import (
    ALERTNAME,
    Outcome,
    ReviewSampler,
    ReviewVerdict,
    decide_alert,
    flag_intent,
    flags_at,
    incident_alert,
    review_at,
)
from monitor.config.policy import Level, ModelPolicy, ReviewAction
from monitor.engine.events import Event
from monitor.engine.health import Cause, Transition
from monitor.observability.metrics import Metrics
from tests.alerts.test_alert_dispatcher import RecordingSink

POLICY = ModelPolicy.model_validate(
    {
        "actions": {
            "warn": {"flags": {"a": "w"}},
            "degraded": {"flags": {"a": "d", "b": True}, "alert": {"severity": "page"}},
            "critical": {"flags": {"c": "off"}, "alert": {"severity": "critical"}},
        }
    }
)


def alert(
    state: str = "degraded", severity: str = "page", signals: tuple[str, ...] = ("e",)
) -> Alert:
    return Alert(
        "m", ALERTNAME, severity, state, signals, "s", "d", "", datetime(2024, 1, 1, tzinfo=UTC)
    )


@given(st.lists(st.sampled_from(list(Level)), max_size=12))
def test_applying_each_transitions_flag_intent_holds_exactly_the_flags_of_the_level(
    levels: list[Level],
) -> None:
    held: dict[str, object] = {}
    level = Level.OK
    for to in [*levels, Level.OK]:
        if to is level:
            continue
        intent = flag_intent(POLICY, level, to)
        assert not set(intent.set_flags) & set(intent.restore)
        held.update(intent.set_flags)
        for flag in intent.restore:
            assert flag in held, "a restore of a flag never set"
            del held[flag]
        assert held == flags_at(POLICY, to)
        level = to
    assert held == {}


def test_a_level_without_an_alert_asks_for_no_notification_and_ok_asks_for_a_resolve() -> None:
    warn = Transition("m", Level.OK, Level.WARN, 1.0, (Cause("e", Level.WARN, 1.0, 0.5, 1.0, 2.0),))
    assert incident_alert(warn, POLICY) is None
    back = Transition("m", Level.DEGRADED, Level.OK, 9.0, ())
    resolve = incident_alert(back, POLICY, {"e": 0.1, "nan": float("nan")})
    assert resolve is not None and resolve.resolved and resolve.values == {"e": 0.1}


def test_a_silence_holds_back_pages_not_resolves_and_shadow_touches_nothing() -> None:
    page = alert()
    silenced = decide_alert(page, holding=None, silenced_until=100.0, now=50.0)
    assert (silenced.outcome, silenced.notifies) == (Outcome.SILENCED, False)
    assert silenced.notification is Notification.FIRE  # what it would have been
    resolve = incident_alert(Transition("m", Level.DEGRADED, Level.OK, 60.0, ()), POLICY)
    assert resolve is not None
    closing = decide_alert(resolve, holding=page, silenced_until=100.0, now=60.0)
    assert (closing.outcome, closing.notification) == (Outcome.REQUESTED, Notification.RESOLVE)
    assert closing.notified(page) is None
    shadow = decide_alert(page, holding=None, shadow=True)
    assert (shadow.outcome, shadow.notifies) == (Outcome.SHADOW, False)


def test_an_update_keeps_the_incidents_first_start() -> None:
    first = alert()
    later = Alert(
        "m", ALERTNAME, "page", "critical", ("e",), "s", "d", "", datetime(2024, 1, 2, tzinfo=UTC)
    )
    decided = decide_alert(later, holding=first)
    assert decided.notification is Notification.UPDATE
    notified = decided.notified(first)
    assert notified is not None and notified.starts_at == first.starts_at
    assert notified.state == "critical"


notified_states = st.tuples(
    st.sampled_from(["warn", "degraded", "critical"]),
    st.sampled_from(["warning", "page"]),
    st.sampled_from([("e",), ("e", "p"), ("p",)]),
)


@given(st.lists(notified_states, min_size=1, max_size=8))
async def test_the_dispatcher_queues_a_fire_exactly_when_the_rule_says_it_is_news(
    states: list[tuple[str, str, tuple[str, ...]]],
) -> None:
    dispatcher = AlertDispatcher([RecordingSink()], Metrics.create(CollectorRegistry()))
    current: Alert | None = None
    for state, severity, signals in states:
        a = alert(state, severity, signals)
        expected = news(current, a)
        assert bool(dispatcher.fire(a)) == (expected is not None)
        current = dispatcher.current(a)
    assert dispatcher.resolve(alert()) != []
    assert dispatcher.resolve(alert()) == []


def test_review_sampling_is_the_same_for_the_same_seed_and_respects_the_budget() -> None:
    review = ReviewAction(sample_rate=0.5, max_per_second=3.0, max_confidence=0.9)
    events = [Event(model="m", confidence=(k % 10) / 10) for k in range(200)]

    def verdicts(seed: int) -> list[ReviewVerdict]:
        sampler = ReviewSampler(random.Random(seed))
        return [sampler.verdict(e, review, now=k / 100) for k, e in enumerate(events)]

    first = verdicts(5)
    assert first == verdicts(5)
    assert ReviewVerdict.CONFIDENT in first and ReviewVerdict.NOT_DRAWN in first
    assert ReviewVerdict.OVER_BUDGET in first
    # 2 s of events at 3 per second, plus the initial budget of 3.
    assert first.count(ReviewVerdict.SAMPLED) <= 3 + 3 * 2
    assert ReviewSampler().verdict(Event(model="m", label=1), review, 0.0) is ReviewVerdict.OUTCOME


def test_review_carries_up_and_stops_in_shadow_mode() -> None:
    policy = ModelPolicy.model_validate({"actions": {"degraded": {"review": {"sample_rate": 0.2}}}})
    at_critical = review_at(policy, Level.CRITICAL)
    assert at_critical is not None and at_critical.sample_rate == 0.2
    assert review_at(policy, Level.WARN) is None
    shadow = policy.model_copy(update={"mode": "shadow"})
    assert review_at(shadow, Level.DEGRADED) is None
