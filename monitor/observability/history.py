"""Recent history of each model's health and signals, kept by the daemon for the status page
and the demo: a bounded ring per model and per signal, sampled on the health tick (never on the
event path), the recent incidents with their runbook, and whether a model is recovering.

Memory is bounded by ``points`` per ring and ``max_models`` (a model the engine dropped is
forgotten); traffic never grows it.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from monitor.config.policy import Level
from monitor.engine.engine import ModelMonitor, SignalMonitor

__all__ = [
    "ModelHistory",
    "SignalHistory",
    "attach_history",
    "history_of",
    "recovery",
    "signal_value",
]

#: Default ring length and spacing: 360 points 5 s apart, the last 30 minutes.
DEFAULT_POINTS = 360
DEFAULT_STEP_S = 5.0
DEFAULT_MAX_MODELS = 1000
MAX_INCIDENTS = 50


#: Each level's rank by its label, and its label (``Level.parse`` and ``Level.label``
#: without an enum look-up: the tick compares levels of every ring it adds to).
_RANK = {level.label: int(level) for level in Level}
_LABEL = {level: level.label for level in Level}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def signal_value(signal: SignalMonitor) -> tuple[float | None, float | None]:
    """The signal's shown statistic and the boundary it is compared with.

    The statistic is the worst member's (the one that sets the level), else the first one's.
    The boundary is the policy's threshold for the next level above the signal's current one
    (or the highest configured when it is already there); the detector's own threshold when
    the policy maps none.
    """
    member = signal.worst or (signal.members[0] if signal.members else None)
    if member is None:
        return None, None
    reading = member.reading
    statistic = _finite(reading.statistic)
    thresholds = signal.policy.thresholds
    if thresholds:
        above = sorted((lvl, v) for lvl, v in thresholds.items() if lvl > signal.level)
        at_or_below = sorted((lvl, v) for lvl, v in thresholds.items() if lvl <= signal.level)
        chosen = above[0] if above else at_or_below[-1]
        return statistic, _finite(float(chosen[1]))
    return statistic, _finite(reading.threshold)


def recovery(monitor: ModelMonitor, now: float) -> dict[str, Any] | None:
    """``{"to": level, "left_s": seconds}`` while the model's signals are below its state and
    the health machine waits out ``recover_after`` (and ``cooldown``) before stepping down;
    None otherwise.
    """
    health = monitor.health
    if health.level is Level.OK or health.healthy_since is None:
        return None
    target = max((s.level for s in monitor.signals), default=Level.OK)
    if target >= health.level:
        return None
    timing = health.timing
    left = max(
        timing.recover_after - (now - health.healthy_since),
        timing.cooldown - (now - health.last_transition_at),
        0.0,
    )
    return {"to": target.label, "left_s": round(left, 1)}


@dataclass(slots=True)
class _Ring:
    times: deque[float]
    values: deque[float | None]
    levels: deque[str]

    @classmethod
    def of(cls, points: int) -> _Ring:
        return cls(deque(maxlen=points), deque(maxlen=points), deque(maxlen=points))

    def add(self, at: float, value: float | None, level: str, step_s: float) -> None:
        if self.times and at - self.times[-1] < step_s:
            # Same step: keep the worse sample, so a short breach is not averaged away.
            if _RANK[level] >= _RANK[self.levels[-1]]:
                self.values[-1], self.levels[-1] = value, level
            return
        self.times.append(at)
        self.values.append(value)
        self.levels.append(level)

    def as_json(self) -> dict[str, list[Any]]:
        return {"t": list(self.times), "v": list(self.values), "level": list(self.levels)}


@dataclass(slots=True)
class ModelHistory:
    """One model's rings: its health state and each signal's statistic."""

    points: int
    state: _Ring = field(init=False)
    signals: dict[str, _Ring] = field(default_factory=dict)
    thresholds: dict[str, float | None] = field(default_factory=dict)
    recovering: dict[str, Any] | None = None
    runbook_url: str = ""
    #: The monitor last sampled, and that sample: each ring with the value and level it
    #: was given (what the same monitor gives again until the engine moves it).
    monitor: ModelMonitor | None = None
    sample: list[tuple[_Ring, float | None, str]] = field(default_factory=list)
    #: The earliest last time of its rings: before ``step_s`` past it, the same sample
    #: again only merges into each ring's last point, which it already is or beats.
    oldest: float = 0.0
    #: Per signal name, what its shown value was computed from (the signal, its member and
    #: Reading, its level) and that value and limit: computed again only when one moved.
    shown: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = _Ring.of(self.points)


class SignalHistory:
    """Each model's recent health and signal values, sampled by :meth:`record`.

    Parameters
    ----------
    points
        Samples kept per ring.
    step_s
        Samples closer together than this share one point (the worse one).
    max_models
        Models past this are not recorded.

    >>> h = SignalHistory(points=3, step_s=1.0)
    >>> for t in range(5):
    ...     _ = h._add_point("m", "err", float(t), 0.1 * t, "ok")
    >>> h.models["m"].signals["err"].as_json()["t"]
    [2.0, 3.0, 4.0]
    """

    def __init__(
        self,
        *,
        points: int = DEFAULT_POINTS,
        step_s: float = DEFAULT_STEP_S,
        max_models: int = DEFAULT_MAX_MODELS,
        wall_clock: Any = time.time,
    ) -> None:
        if points < 2:
            raise ValueError(f"points must be at least 2, got {points!r}.")
        if not step_s >= 0 or math.isinf(step_s):
            raise ValueError(f"step_s must be a finite number >= 0, got {step_s!r}.")
        self.points = points
        self.step_s = step_s
        self.max_models = max_models
        self.wall_clock = wall_clock
        self.models: dict[str, ModelHistory] = {}
        #: Recent incidents, oldest first: model, worst level, start, end (None: ongoing).
        self.incidents: deque[dict[str, Any]] = deque(maxlen=MAX_INCIDENTS)
        self._open: dict[str, dict[str, Any]] = {}

    def record(
        self,
        models: Mapping[str, ModelMonitor],
        now: float,
        moved: Collection[str] | None = None,
    ) -> None:
        """Sample every model once; ``now`` is the health machines' clock.

        ``moved``: the models the engine evaluated since the last call (``Engine.take_moved``);
        any other model's levels, Readings and signals are those last sampled, so its sample
        is the last one again, added only to the rings where it starts a point (the same
        rings and incidents as sampling it anew). None: every model is sampled anew.
        """
        at = self.wall_clock()
        step_s = self.step_s
        kept = self.models
        for gone in kept.keys() - models.keys():
            del kept[gone]
            self._open.pop(gone, None)
        for name, monitor in models.items():
            history = kept.get(name)
            if (
                moved is not None
                and history is not None
                and history.monitor is monitor
                and name not in moved
            ):
                if at - history.oldest >= step_s:
                    oldest = at
                    for ring, value, level in history.sample:
                        times = ring.times
                        if at - times[-1] >= step_s:  # as ``_Ring.add`` starts a point
                            times.append(at)
                            ring.values.append(value)
                            ring.levels.append(level)
                        else:
                            ring.add(at, value, level, step_s)
                        if times[-1] < oldest:
                            oldest = times[-1]
                    history.oldest = oldest
                continue
            if history is None:
                if len(kept) >= self.max_models:
                    continue
                history = kept[name] = ModelHistory(self.points)
            self._sample(name, history, monitor, at, now)

    def _sample(
        self, name: str, history: ModelHistory, monitor: ModelMonitor, at: float, now: float
    ) -> None:
        history.runbook_url = monitor.policy.runbook_url
        state = monitor.health.level.label
        history.state.add(at, None, state, self.step_s)
        history.recovering = recovery(monitor, now)
        sample: list[tuple[_Ring, float | None, str]] = [(history.state, None, state)]
        shown = history.shown
        for signal in monitor.signals:
            signal_name = signal.policy.signal_name
            member = signal.worst or (signal.members[0] if signal.members else None)
            reading = member.reading if member is not None else None
            found = shown.get(signal_name)
            if (
                found is not None
                and found[0] is signal
                and found[1] is member
                and found[2] is reading
                and found[3] is signal.level
            ):
                value, limit = found[4], found[5]
            else:
                value, limit = signal_value(signal)
                shown[signal_name] = (signal, member, reading, signal.level, value, limit)
            history.thresholds[signal_name] = limit
            level = _LABEL[signal.level]
            sample.append((self._add_point(name, signal_name, at, value, level), value, level))
        history.monitor = monitor
        history.sample = sample
        history.oldest = min(ring.times[-1] for ring, _, _ in sample)
        self._follow_incident(name, state, at, history.runbook_url)

    def _add_point(
        self, model: str, signal: str, at: float, value: float | None, lvl: str
    ) -> _Ring:
        history = self.models.get(model)
        if history is None:
            history = self.models[model] = ModelHistory(self.points)
        ring = history.signals.get(signal)
        if ring is None:
            ring = history.signals[signal] = _Ring.of(self.points)
        ring.add(at, value, lvl, self.step_s)
        return ring

    def _follow_incident(self, model: str, state: str, at: float, runbook_url: str) -> None:
        incident = self._open.get(model)
        if state != "ok":
            if incident is None:
                incident = {"model": model, "worst": state, "started_at": at, "ended_at": None,
                            "runbook_url": runbook_url}  # fmt: skip
                self._open[model] = incident
                self.incidents.append(incident)
            elif Level.parse(state) > Level.parse(incident["worst"]):
                incident["worst"] = state
        elif incident is not None:
            incident["ended_at"] = at
            del self._open[model]

    def snapshot(self) -> dict[str, Any]:
        """The JSON shape served at ``/status/history`` and embedded in the status page."""
        return {
            "step_s": self.step_s,
            "points": self.points,
            "models": {
                name: {
                    "state": h.state.as_json(),
                    "recovering": h.recovering,
                    "runbook_url": h.runbook_url,
                    "signals": {
                        signal: {**ring.as_json(), "threshold": h.thresholds.get(signal)}
                        for signal, ring in h.signals.items()
                    },
                }
                for name, h in self.models.items()
            },
            "incidents": [dict(i) for i in self.incidents],
        }


_HISTORIES: weakref.WeakKeyDictionary[Any, SignalHistory] = weakref.WeakKeyDictionary()


def history_of(owner: Any) -> SignalHistory:
    """The history kept for ``owner`` (a daemon), created with the defaults on first use."""
    history = _HISTORIES.get(owner)
    if history is None:
        history = _HISTORIES[owner] = SignalHistory()
    return history


def attach_history(owner: Any, history: SignalHistory) -> SignalHistory:
    """Keep ``history`` for ``owner`` (e.g. the demo's, sampled every second)."""
    _HISTORIES[owner] = history
    return history
