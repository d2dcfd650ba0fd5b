"""The per-model health state machine: levels from signal breaches, with hysteresis.

``for`` (a breach must hold, like Prometheus' ``for``), ``recover_after`` (health must hold
before stepping down, like ``keep_firing_for``) and ``cooldown`` (after a recovery, how long
before a new incident may open) keep one incident to one transition each way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor.config.policy import HealthTiming, Level

__all__ = ["Cause", "HealthMachine", "Transition"]

_LEVELS = (Level.WARN, Level.DEGRADED, Level.CRITICAL)


@dataclass(slots=True, frozen=True)
class Cause:
    """Why a signal counts toward a level: its statistic, the boundary and how long it held."""

    signal: str
    level: Level
    statistic: float
    threshold: float
    effect: float
    held_s: float


@dataclass(slots=True, frozen=True)
class Transition:
    model: str
    from_level: Level
    to_level: Level
    at: float
    causes: tuple[Cause, ...]

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(c.signal for c in self.causes)

    def describe(self) -> str:
        if not self.causes:
            return (
                f"{self.model}: {self.from_level.label} -> {self.to_level.label}: "
                "every signal healthy"
            )
        parts = [
            f"{c.signal}={c.statistic:.4g} (threshold {c.threshold:.4g}, held {c.held_s:.0f}s)"
            for c in self.causes
        ]
        return f"{self.model}: {self.from_level.label} -> {self.to_level.label}: " + "; ".join(
            parts
        )


@dataclass(slots=True)
class SignalObservation:
    """One signal's level after a batch, with what supports it."""

    level: Level
    statistic: float
    threshold: float
    effect: float
    for_s: float


@dataclass(slots=True)
class HealthMachine:
    """Health of one model.

    >>> from monitor.config.policy import HealthTiming
    >>> m = HealthMachine("fraud", HealthTiming(**{"for": 10, "cooldown": 0, "recover_after": 30}))
    >>> bad = {"error_rate": SignalObservation(Level.DEGRADED, 0.2, 0.05, 0.19, 10.0)}
    >>> m.observe(0.0, bad) is None, m.observe(9.0, bad) is None
    (True, True)
    >>> m.observe(10.0, bad).to_level.label
    'degraded'
    >>> ok = {"error_rate": SignalObservation(Level.OK, 0.01, 0.05, 0.0, 10.0)}
    >>> m.observe(20.0, ok) is None, m.observe(49.0, ok) is None
    (True, True)
    >>> m.observe(50.0, ok).to_level.label
    'ok'

    With a cooldown, recovery still comes after ``recover_after``; the next incident waits
    for the cooldown to pass after that recovery, then opens if its breach still holds:

    >>> timing = HealthTiming(**{"for": 10, "cooldown": 300, "recover_after": 30})
    >>> m = HealthMachine("fraud", timing)
    >>> m.observe(0.0, bad), m.observe(10.0, bad).to_level.label, m.observe(20.0, ok)
    (None, 'degraded', None)
    >>> m.observe(50.0, ok).to_level.label
    'ok'
    >>> m.observe(100.0, bad) is None, m.observe(349.0, bad) is None
    (True, True)
    >>> m.observe(350.0, bad).to_level.label
    'degraded'
    """

    model: str
    timing: HealthTiming
    level: Level = Level.OK
    last_transition_at: float = float("-inf")
    #: signal -> level -> since when the signal has been at or above that level.
    breach_since: dict[str, dict[Level, float]] = field(default_factory=dict)
    healthy_since: float | None = None

    def observe(self, now: float, signals: dict[str, SignalObservation]) -> Transition | None:
        """Feed the signals' levels after a batch; return the transition it causes, if any."""
        target = Level.OK
        causes: dict[Level, list[Cause]] = {lvl: [] for lvl in _LEVELS}
        for name, obs in signals.items():
            since = self.breach_since.setdefault(name, {})
            for lvl in _LEVELS:
                if obs.level >= lvl:
                    start = since.setdefault(lvl, now)
                    held = now - start
                    if held >= obs.for_s:
                        target = max(target, lvl)
                        causes[lvl].append(
                            Cause(name, obs.level, obs.statistic, obs.threshold, obs.effect, held)
                        )
                else:
                    since.pop(lvl, None)
        for name in list(self.breach_since):
            if name not in signals:
                del self.breach_since[name]

        if target > self.level:
            self.healthy_since = None
            # Escalating within an incident is never held back by the cooldown; a new
            # incident right after a recovery is (that is what stops flapping).
            if self.level is Level.OK and now - self.last_transition_at < self.timing.cooldown:
                return None
            return self._move(now, target, tuple(causes[target]))
        if target < self.level:
            if self.healthy_since is None:
                self.healthy_since = now
            # The cooldown never delays a recovery: it spaces a recovery from the next
            # incident. Holding a healthy model in fallback would be an outage of its own.
            if now - self.healthy_since < self.timing.recover_after:
                return None
            return self._move(now, target, tuple(causes[target]) if target else ())
        self.healthy_since = None
        return None

    def _move(self, now: float, target: Level, causes: tuple[Cause, ...]) -> Transition:
        transition = Transition(self.model, self.level, target, now, causes)
        self.level = target
        self.last_transition_at = now
        self.healthy_since = None
        return transition
