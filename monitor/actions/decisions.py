"""The decision core: pure rules from a model's transitions to what the daemon does.

Flag intents (the set/restore diff per level), incident notifications (fire / update /
resolve, by the sinks' own rule in :mod:`alerts.incidents`), silences and review sampling.
No I/O, no asyncio, no clock of its own (times and the random source are the caller's). The
daemon's :class:`monitor.actions.actions.Actions` and the offline replay both call it, so a
replay reports what the daemon would really do.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from alerts.base import Alert
from alerts.incidents import Notification, news
from monitor.config.policy import Level, ModelPolicy, ReviewAction
from monitor.engine.health import Transition
from monitor.flags.base import FlagValue

if TYPE_CHECKING:
    from monitor.engine.events import Event

__all__ = [
    "ALERTNAME",
    "AlertDecision",
    "FlagIntent",
    "Notification",
    "Outcome",
    "ReviewSampler",
    "ReviewVerdict",
    "decide_alert",
    "flag_intent",
    "flags_at",
    "incident_alert",
    "is_silenced",
    "review_at",
]

#: One alert name per model incident; its ``state`` and ``severity`` labels follow the level,
#: so an escalation updates the same incident (one page) instead of opening a second one.
ALERTNAME = "ModelUnhealthy"


def flags_at(policy: ModelPolicy, level: Level) -> dict[str, FlagValue]:
    """The flags in effect at ``level``: every level's flags up to it, higher levels winning.

    >>> from monitor.config.policy import LevelActions
    >>> p = ModelPolicy(actions={"degraded": LevelActions(flags={"v": "rules"}),
    ...                          "critical": LevelActions(flags={"on": False, "v": "off"})})
    >>> flags_at(p, Level.WARN), flags_at(p, Level.DEGRADED), flags_at(p, Level.CRITICAL)
    ({}, {'v': 'rules'}, {'v': 'off', 'on': False})
    """
    merged: dict[str, FlagValue] = {}
    for lvl in (Level.WARN, Level.DEGRADED, Level.CRITICAL):
        if lvl > level:
            break
        actions = policy.actions.get(lvl.label)  # type: ignore[call-overload]
        if actions is not None:
            merged.update(actions.flags)
    return merged


@dataclass(frozen=True, slots=True)
class FlagIntent:
    """The flag writes one transition asks for: flags to set (with their value) and flags to
    restore to their value before the incident, in this order."""

    set_flags: dict[str, FlagValue]
    restore: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.set_flags and not self.restore


def flag_intent(policy: ModelPolicy, from_level: Level, to_level: Level) -> FlagIntent:
    """The set/restore diff between the flags in effect at ``from_level`` and ``to_level``.

    >>> from monitor.config.policy import LevelActions
    >>> p = ModelPolicy(actions={"degraded": LevelActions(flags={"v": "rules"}),
    ...                          "critical": LevelActions(flags={"on": False, "v": "off"})})
    >>> flag_intent(p, Level.DEGRADED, Level.CRITICAL)
    FlagIntent(set_flags={'v': 'off', 'on': False}, restore=())
    >>> flag_intent(p, Level.CRITICAL, Level.DEGRADED)
    FlagIntent(set_flags={'v': 'rules'}, restore=('on',))
    >>> flag_intent(p, Level.OK, Level.WARN).empty
    True
    """
    before = flags_at(policy, from_level)
    after = flags_at(policy, to_level)
    return FlagIntent(
        {f: v for f, v in after.items() if before.get(f) != v},
        tuple(f for f in before if f not in after),
    )


# -- incident notifications --------------------------------------------------------------------


def incident_alert(
    t: Transition, policy: ModelPolicy, recovery_values: Mapping[str, float] | None = None
) -> Alert | None:
    """The alert a transition asks for: a fire on entering a level with an ``alert``, a
    resolve on the return to ok, None otherwise (a level without an alert leaves the
    incident's alert as it is).

    ``recovery_values``: what the model's signals read now, carried by a resolve (a recovery
    has no causes); without it the resolve carries none.
    """
    at = datetime.fromtimestamp(t.at, UTC)
    values = {c.signal: c.statistic for c in t.causes if math.isfinite(c.statistic)}
    if t.to_level is Level.OK:
        if recovery_values is not None:
            values = {k: v for k, v in recovery_values.items() if math.isfinite(v)}
        return Alert(
            model=t.model,
            alertname=ALERTNAME,
            severity="info",
            state="ok",
            signals=(),
            summary=f"{t.model} recovered",
            description=t.describe(),
            runbook_url=policy.runbook_url,
            starts_at=at,
            ends_at=at,
            values=values,
        )
    level_actions = policy.actions.get(t.to_level.label)  # type: ignore[call-overload]
    if level_actions is None or level_actions.alert is None:
        return None
    summary = level_actions.alert.summary or (
        f"{t.model} is {t.to_level.label}: " + ", ".join(t.signals or ("health",))
    )
    flags = flags_at(policy, t.to_level)
    description = t.describe()
    if flags:
        description += ". Flags set: " + ", ".join(f"{k}={v}" for k, v in flags.items())
    if policy.mode == "shadow":
        description += " (shadow mode: no flag touched)"
    return Alert(
        model=t.model,
        alertname=ALERTNAME,
        severity=level_actions.alert.severity,
        state=t.to_level.label,
        signals=t.signals,
        summary=summary,
        description=description,
        runbook_url=policy.runbook_url,
        starts_at=at,
        values=values,
    )


class Outcome(enum.Enum):
    """What becomes of a decided action."""

    #: Carried out (handed to the flag worker or the alert dispatcher).
    REQUESTED = "requested"
    #: ``mode: shadow``: recorded, nothing touched.
    SHADOW = "shadow"
    #: The model is silenced: a page held back (never a resolve).
    SILENCED = "silenced"


def is_silenced(alert: Alert, silenced_until: float | None, now: float) -> bool:
    """Whether a silence holds ``alert`` back: pages only, never a resolve (an incident paged
    before the silence must still close, or it stays open and re-sent after recovery).

    >>> from datetime import datetime
    >>> page = Alert("m", ALERTNAME, "page", "degraded", (), "s", "d", "", datetime(2024, 1, 1))
    >>> is_silenced(page, 100.0, 50.0), is_silenced(page, 100.0, 100.0), is_silenced(page, None, 0)
    (True, False, False)
    >>> is_silenced(replace(page, ends_at=datetime(2024, 1, 2)), 100.0, 50.0)
    False
    """
    return not alert.resolved and silenced_until is not None and silenced_until > now


@dataclass(frozen=True, slots=True)
class AlertDecision:
    """One transition's alert: what was decided, and what the sinks are told of it."""

    alert: Alert
    outcome: Outcome
    #: The notification the sinks get if it is carried out (``alerts.incidents.news`` against
    #: the incident as last notified); None: not news, no sink hears of it.
    notification: Notification | None

    @property
    def kind(self) -> str:
        """The action's name in metrics and the audit trail."""
        return "alert_resolve" if self.alert.resolved else "alert_fire"

    @property
    def notifies(self) -> bool:
        """Whether a sink gets a notification (carried out, and news)."""
        return self.outcome is Outcome.REQUESTED and self.notification is not None

    def notified(self, holding: Alert | None) -> Alert | None:
        """The incident as last notified once this decision's notification went out: the
        alert for a fire or an update (keeping the incident's first start), None after a
        resolve, ``holding`` unchanged when nothing was notified.
        """
        if self.notification is None:
            return holding
        if self.notification is Notification.RESOLVE:
            return None
        if holding is not None:
            return replace(self.alert, starts_at=holding.starts_at)
        return self.alert


def decide_alert(
    alert: Alert,
    *,
    holding: Alert | None,
    shadow: bool = False,
    silenced_until: float | None = None,
    now: float = 0.0,
) -> AlertDecision:
    """Decide ``alert`` (from :func:`incident_alert`) for a model whose incident was last
    notified as ``holding`` (None: no open incident).

    >>> from datetime import datetime
    >>> fire = Alert("m", ALERTNAME, "page", "degraded", ("error_rate",), "s", "d", "",
    ...              datetime(2024, 1, 1))
    >>> first = decide_alert(fire, holding=None)
    >>> first.notification, first.notifies
    (<Notification.FIRE: 'fire'>, True)
    >>> decide_alert(fire, holding=first.notified(None)).notification is None
    True
    >>> decide_alert(fire, holding=None, silenced_until=10.0, now=5.0).outcome
    <Outcome.SILENCED: 'silenced'>
    """
    if shadow:
        outcome = Outcome.SHADOW
    elif is_silenced(alert, silenced_until, now):
        outcome = Outcome.SILENCED
    else:
        outcome = Outcome.REQUESTED
    return AlertDecision(alert, outcome, news(holding, alert))


# -- review sampling ---------------------------------------------------------------------------


def review_at(policy: ModelPolicy, level: Level) -> ReviewAction | None:
    """The review sampling in effect at ``level``: none below degraded or in shadow mode;
    like flags, review carries up (a critical model keeps degraded's sampling unless critical
    configures its own).

    >>> from monitor.config.policy import LevelActions, ReviewAction
    >>> p = ModelPolicy(actions={"degraded": LevelActions(review=ReviewAction(sample_rate=0.5))})
    >>> review_at(p, Level.CRITICAL).sample_rate, review_at(p, Level.WARN)
    (0.5, None)
    """
    if level < Level.DEGRADED or policy.mode == "shadow":
        return None
    for lvl in (level, Level.DEGRADED):
        actions = policy.actions.get(lvl.label)  # type: ignore[call-overload]
        if actions is not None and actions.review is not None:
            review: ReviewAction = actions.review
            return review
    return None


class ReviewVerdict(enum.Enum):
    """Whether one event of a reviewed model goes to the review topic, and if not why."""

    SAMPLED = "sampled"
    #: It carries a label: an outcome (maybe a reviewer's own answer coming back) needs no
    #: review, and sampling it would loop.
    OUTCOME = "outcome"
    #: The model was confident enough (``max_confidence``).
    CONFIDENT = "confident"
    #: Not drawn at ``sample_rate``.
    NOT_DRAWN = "not_drawn"
    #: Over the model's ``max_per_second`` budget.
    OVER_BUDGET = "over_budget"


class ReviewSampler:
    """Review sampling decisions: the draw at ``sample_rate`` and a token bucket of
    ``max_per_second`` per model. The random source and the time are the caller's, so two
    callers with the same seed and the same times decide alike.

    >>> from monitor.config.policy import ReviewAction
    >>> from monitor.engine.events import Event
    >>> sampler = ReviewSampler(random.Random(0))
    >>> review = ReviewAction(sample_rate=1.0, max_per_second=2.0)
    >>> [sampler.verdict(Event(model="m"), review, now=0.0).value for _ in range(3)]
    ['sampled', 'sampled', 'over_budget']
    >>> sampler.verdict(Event(model="m", label=1), review, now=9.0).value
    'outcome'
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random(0)
        #: Per model: (tokens left, when last refilled).
        self._budget: dict[str, tuple[float, float]] = {}

    def verdict(self, event: Event, review: ReviewAction, now: float) -> ReviewVerdict:
        if event.label is not None:
            return ReviewVerdict.OUTCOME
        if review.max_confidence is not None and (
            event.confidence is None or event.confidence >= review.max_confidence
        ):
            return ReviewVerdict.CONFIDENT
        if self.rng.random() >= review.sample_rate:
            return ReviewVerdict.NOT_DRAWN
        tokens, last = self._budget.get(event.model, (review.max_per_second, now))
        tokens = min(review.max_per_second, tokens + (now - last) * review.max_per_second)
        if tokens < 1.0:
            self._budget[event.model] = (tokens, now)
            return ReviewVerdict.OVER_BUDGET
        self._budget[event.model] = (tokens - 1.0, now)
        return ReviewVerdict.SAMPLED
