"""Offline replay: runs a policy over recorded events (JSON lines, optionally gzip) on event
time, and reports the transitions, flag flips and alerts it would have caused, and their score.

The engine and health machine are the daemon's own; only the clock differs. Replay time is the
running maximum of the events' time: ``ts``, or for an event without it the broker's record
timestamp that ``driftwarden record`` keeps beside it (``_record_ts``; the daemon times such an
event by its receive time), so ``for``, ``recover_after`` and ``cooldown`` behave as they would
have live. A clock that does not move far enough for any ``for`` to run out is reported
(``warnings``). See ``docs/replay.md`` for the summary shape and the scoring rules.
"""

from __future__ import annotations

import bisect
import gzip
import io
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import msgspec

from alerts.base import Alert
from monitor.actions.decisions import (
    Notification,
    decide_alert,
    flag_intent,
    flags_at,
    incident_alert,
)
from monitor.config.policy import Level, ModelPolicy, SignalPolicy
from monitor.config.settings import Settings
from monitor.engine.engine import Engine, ModelMonitor, describe_coverage
from monitor.engine.events import (
    MAX_EPOCH_S,
    BadReason,
    BadRecord,
    Event,
    EventDecoder,
    event_time,
)
from monitor.engine.health import Transition
from monitor.errors import ConfigError
from monitor.tools.record import RECORD_TS_FIELD

__all__ = [
    "SUMMARY_VERSION",
    "BadLine",
    "Incident",
    "ModelTrail",
    "RecordedEvent",
    "RecordedEventDecoder",
    "Replay",
    "ReplayResult",
    "SeriesRecorder",
    "load_truth",
    "open_events",
    "record_time",
    "score",
]

log = logging.getLogger(__name__)

#: Version of the ``--summary`` JSON shape; bumped only on an incompatible change.
SUMMARY_VERSION = 1
#: Bad lines kept with their detail; all of them are counted.
MAX_BAD_KEPT = 1000
#: Events of one model applied to the engine at once. Transitions are attributed to the last
#: line of the chunk that caused them, so this is also the attribution's precision.
DEFAULT_CHUNK = 16
#: How often (event time) every model is re-evaluated on the clock alone, as the daemon's
#: one-second tick does live: this is what finds recoveries between a model's events.
TICK_S = 1.0
#: A gap in event time is walked tick by tick for at most this many ticks, then jumped.
MAX_TICKS_PER_GAP = 3600
_GZIP_MAGIC = b"\x1f\x8b"
#: A replay of at least this many events whose clock moved less than the shortest ``for`` is
#: warned about (a stuck clock is warned about whatever the count).
MANY_EVENTS = 100
_STAMP_PREFIX = b',"' + RECORD_TS_FIELD.encode() + b'":'
#: Longest ``,"_record_ts":<epoch s with ms>`` that ``record`` appends.
_STAMP_MAX = len(_STAMP_PREFIX) + 20


# -- input ------------------------------------------------------------------------------------


def open_events(source: str | Path | IO[bytes]) -> IO[bytes]:
    """Open JSON lines for binary reading, decompressing gzip (told by its magic bytes, not its
    name). ``source`` is a path, ``-`` for standard input, or an open binary file."""
    raw: IO[bytes]
    if isinstance(source, str | Path):
        raw = sys.stdin.buffer if str(source) == "-" else Path(source).open("rb")  # noqa: SIM115
    else:
        raw = source
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[arg-type,type-var]
    if buffered.peek(2)[:2] == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    return buffered


@dataclass(slots=True, frozen=True)
class BadLine:
    """A line that is not a valid v1 event: 0-based line number, reason and detail."""

    line: int
    reason: str
    detail: str


class RecordedEvent(Event, gc=False):
    """An event line of a ``driftwarden record`` file: the event, and the broker's record
    timestamp kept beside it. Any type is accepted here (a producer may send a member of that
    name): ``record_time`` uses only an epoch-seconds number, as the contract bounds ``ts``."""

    record_ts: Any = msgspec.field(default=None, name=RECORD_TS_FIELD)


def record_time(event: Event) -> float | None:
    """The broker timestamp ``record`` kept for ``event`` (epoch seconds), or None.

    >>> decode = RecordedEventDecoder(max_bytes=1000).decode
    >>> record_time(decode(b'{"model": "m", "_record_ts": 1700000000.5}'))
    1700000000.5
    >>> [record_time(decode(b'{"model": "m", "_record_ts": %s}' % v)) for v in
    ...  (b'"soon"', b"true", b"-1", b"1e300", b"null")]
    [None, None, None, None, None]
    """
    value = getattr(event, "record_ts", None)
    if not isinstance(value, int | float) or isinstance(value, bool):  # a bool is no time
        return None
    seconds = float(value)
    return seconds if 0.0 <= seconds <= MAX_EPOCH_S else None


class RecordedEventDecoder:
    """The daemon's ``EventDecoder`` for the lines of a recording: the same rules and limits,
    applied to the record value as the broker held it. ``max_bytes`` is checked without the
    ``_record_ts`` member that ``record`` appended, so a value the daemon accepted is not
    refused here for being stamped."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._decode = EventDecoder(max_bytes + _STAMP_MAX, event_type=RecordedEvent).decode

    def decode(self, line: bytes) -> Event | BadRecord:
        size = len(line)
        if size > self.max_bytes:
            stamp = line.rfind(_STAMP_PREFIX, max(0, size - _STAMP_MAX))
            if stamp > 0 and line.endswith(b"}"):
                size = stamp + 1  # the value without the stamp, with its closing brace
            if size > self.max_bytes:
                return BadRecord(
                    BadReason.TOO_LARGE, f"record is {size} bytes, over max {self.max_bytes}"
                )
        return self._decode(line)


# -- actions the policy would take --------------------------------------------------------------


@dataclass(slots=True)
class ModelTrail:
    """Transitions of one model and the flag flips and notifications they imply.

    It implements no rule of its own: the decision core (``monitor.actions.decisions``) that
    the daemon's actions call decides both. Flags: on entering a level, the flags named by that
    level and every lower level are set (a higher level wins on a flag named twice); flags no
    longer named are restored to their prior value (unknown offline, so ``value`` is null).
    Notifications: one incident per model, notified as the sinks are: ``fire`` when it opens
    on a level with an alert, ``update`` each time what the sinks are told (state, severity,
    signals) changes on a level with an alert, ``resolve`` on the return to ok.

    >>> from monitor.config.policy import LevelActions, ModelPolicy
    >>> p = ModelPolicy(actions={"degraded": LevelActions(flags={"variant": "rules"})})
    >>> trail = ModelTrail("m", p)
    >>> trail.desired_flags(Level.CRITICAL), trail.desired_flags(Level.WARN)
    ({'variant': 'rules'}, {})
    """

    model: str
    policy: ModelPolicy
    transitions: list[dict[str, Any]] = field(default_factory=list)
    flags: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    #: signal -> [transitions naming it, alerts fired or updated naming it]
    per_signal: dict[str, list[int]] = field(default_factory=dict)
    #: The signals the model watched at the end (discovered ones too); None: the policy's.
    watched: list[SignalPolicy] | None = None
    #: What was watched and why: discovery's state, each signal's origin and reason.
    coverage: dict[str, Any] | None = None
    #: The incident as last notified (None: no open incident), as the dispatcher holds it.
    _notified: Alert | None = None

    @property
    def signals(self) -> list[SignalPolicy]:
        """The signals the model watched: its policy's, and what discovery added."""
        return self.watched if self.watched is not None else self.policy.signals

    def watch(self, monitor: ModelMonitor) -> None:
        """Keep what ``monitor`` watched and why (at the end of the replay)."""
        self.watched = [signal.policy for signal in monitor.signals]
        self.coverage = {
            **describe_coverage(monitor),
            "signals": [covered.to_json() for covered in monitor.coverage()],
        }

    def desired_flags(self, level: Level) -> dict[str, Any]:
        return dict(flags_at(self.policy, level))

    def record(self, t: Transition, index: int) -> None:
        signals = list(t.signals)
        base = {"index": index, "ts": t.at}
        self.transitions.append(
            {**base, "from": t.from_level.label, "to": t.to_level.label, "signals": signals}
        )
        for name in signals:
            self.per_signal.setdefault(name, [0, 0])[0] += 1

        intent = flag_intent(self.policy, t.from_level, t.to_level)
        for flag, value in intent.set_flags.items():
            self.flags.append({**base, "flag": flag, "action": "set", "value": value})
        for flag in intent.restore:
            self.flags.append({**base, "flag": flag, "action": "restore", "value": None})

        alert = incident_alert(t, self.policy)
        if alert is None:
            return
        # Shadow or not, the replay reports what enforcing would notify; it has no silences.
        decision = decide_alert(alert, holding=self._notified)
        notification = decision.notification
        if notification is None:
            return
        # A resolve reaches the sinks as the incident last fired (its severity).
        shown = self._notified if notification is Notification.RESOLVE else alert
        assert shown is not None  # a resolve is news only while an incident is open
        self.alerts.append(
            {
                **base,
                "action": notification.value,
                "severity": shown.severity,
                "state": t.to_level.label,
                "signals": signals,
            }
        )
        if notification is not Notification.RESOLVE:
            for name in signals:
                self.per_signal.setdefault(name, [0, 0])[1] += 1
        self._notified = decision.notified(self._notified)


# -- sampled time series for the report --------------------------------------------------------


@dataclass(slots=True)
class SeriesRecorder:
    """Bounded time series of one model's signal statistics, for the report's plots.

    Readings are bucketed on event time; a bucket keeps the worst statistic seen in it (so a
    threshold crossing the engine saw is visible on the plot). When ``max_points`` buckets
    exist, neighbours are merged pairwise and the bucket width doubles: memory stays bounded
    however long the replay.

    >>> rec = SeriesRecorder(["s"], [True], max_points=4, width=1.0)
    >>> for t in range(20):
    ...     rec.add(float(t), [float(t % 7)], [math.nan])
    >>> len(rec.times) <= 4, rec.width
    (True, 8.0)
    """

    signals: list[str]
    higher_is_worse: list[bool]
    max_points: int = 1200
    width: float = 0.01
    times: list[float] = field(default_factory=list)
    values: list[list[float]] = field(default_factory=list)
    thresholds: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.values = [[] for _ in self.signals]
        self.thresholds = [[] for _ in self.signals]

    def add_signal(self, name: str, higher_is_worse: bool) -> None:
        """A series for a signal built mid-replay (at the end of discovery): no value before."""
        self.signals.append(name)
        self.higher_is_worse.append(higher_is_worse)
        self.values.append([math.nan] * len(self.times))
        self.thresholds.append([math.nan] * len(self.times))

    def _worse(self, i: int, a: float, b: float) -> float:
        if math.isnan(a):
            return b
        if math.isnan(b):
            return a
        return max(a, b) if self.higher_is_worse[i] else min(a, b)

    def add(self, t: float, stats: list[float], thresholds: list[float]) -> None:
        bucket = math.floor(t / self.width) * self.width
        if self.times and self.times[-1] >= bucket:
            for i, value in enumerate(stats):
                self.values[i][-1] = self._worse(i, self.values[i][-1], value)
                self.thresholds[i][-1] = thresholds[i]
            return
        self.times.append(bucket)
        for i, value in enumerate(stats):
            self.values[i].append(value)
            self.thresholds[i].append(thresholds[i])
        if len(self.times) > self.max_points:
            self._halve()

    def _halve(self) -> None:
        self.width *= 2.0
        merged_times: list[float] = []
        merged_values: list[list[float]] = [[] for _ in self.signals]
        merged_thresholds: list[list[float]] = [[] for _ in self.signals]
        for k, t in enumerate(self.times):
            bucket = math.floor(t / self.width) * self.width
            if merged_times and merged_times[-1] == bucket:
                for i in range(len(self.signals)):
                    merged_values[i][-1] = self._worse(i, merged_values[i][-1], self.values[i][k])
                    merged_thresholds[i][-1] = self.thresholds[i][k]
                continue
            merged_times.append(bucket)
            for i in range(len(self.signals)):
                merged_values[i].append(self.values[i][k])
                merged_thresholds[i].append(self.thresholds[i][k])
        self.times, self.values, self.thresholds = merged_times, merged_values, merged_thresholds


# -- ground truth and scoring -------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Incident:
    """A known incident window of one model; ``signals`` None means any signal."""

    model: str
    start: float
    end: float
    signals: tuple[str, ...] | None = None
    label: str | None = None

    def concerns(self, signal: str | None) -> bool:
        return signal is None or self.signals is None or signal in self.signals


def _parse_time(value: Any, where: str) -> float:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{where}: expected epoch seconds or an RFC 3339 time, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError as err:
            raise ValueError(f"{where}: {value!r} is not an RFC 3339 time") from err
    raise ValueError(f"{where}: expected epoch seconds or an RFC 3339 time, got {value!r}")


def load_truth(path: str | Path) -> list[Incident]:
    """Read a truth file: JSON lines ``{"model", "start", "end", "signals"?, "label"?}``.

    Blank lines and lines starting with ``#`` are skipped. Raises ConfigError with one line per
    problem (``FILE: line N: ...``, 1-based as editors count).
    """
    problems: list[str] = []
    incidents: list[Incident] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([f"{path}: cannot read the truth file: {err.strerror}"]) from err
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{path}: line {number}"
        try:
            obj = json.loads(stripped)
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {stripped[:60]!r}")
            model = obj.get("model")
            if not isinstance(model, str) or not model:
                raise ValueError(f"{where}: 'model' must be a non-empty string, got {model!r}")
            start = _parse_time(obj.get("start"), f"{where}: start")
            end = _parse_time(obj.get("end"), f"{where}: end")
            if end < start:
                raise ValueError(f"{where}: end ({end}) is before start ({start})")
            signals = obj.get("signals")
            if signals is not None and (
                not isinstance(signals, list) or not all(isinstance(s, str) for s in signals)
            ):
                raise ValueError(f"{where}: 'signals' must be a list of names, got {signals!r}")
            label = obj.get("label")
            incidents.append(
                Incident(
                    model,
                    start,
                    end,
                    tuple(signals) if signals is not None else None,
                    str(label) if label is not None else None,
                )
            )
        except json.JSONDecodeError as err:
            problems.append(f"{where}: not valid JSON: {err.msg}")
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ConfigError(problems)
    incidents.sort(key=lambda i: (i.model, i.start))
    return incidents


@dataclass(slots=True)
class _Coverage:
    """Run-length record of which incident windows each of a model's events fell into.

    One run per change of the set of open windows, so its size is bounded by the number of
    incidents, not events: enough to score the always-fire baseline exactly.
    """

    #: (start, end + grace, incident number), sorted by start.
    windows: list[tuple[float, float, int]]
    runs: list[tuple[frozenset[int], float]] = field(default_factory=list)
    _open: frozenset[int] = frozenset()
    _next_change: float = -math.inf

    def see(self, t: float) -> None:
        if t < self._next_change and self.runs:
            return
        active = frozenset(k for start, end, k in self.windows if start <= t <= end)
        future = [s for s, _, _ in self.windows if s > t] + [
            e for _, e, _ in self.windows if e >= t
        ]
        # Closed windows: an event exactly at `end` is still inside, so change just after it.
        self._next_change = min(future, default=math.inf)
        if any(e == self._next_change for _, e, _ in self.windows):
            self._next_change = math.nextafter(self._next_change, math.inf)
        if not self.runs or active != self._open:
            self.runs.append((active, t))
            self._open = active


def _delay_stats(delays: list[float]) -> dict[str, float | None]:
    if not delays:
        return {"mean": None, "median": None, "max": None}
    return {
        "mean": round(statistics.fmean(delays), 6),
        "median": round(statistics.median(delays), 6),
        "max": round(max(delays), 6),
    }


def _score_alarms(alarms: list[float], incidents: list[Incident], grace: float) -> dict[str, Any]:
    detected: list[float] = []
    misses = 0
    for incident in incidents:
        lo, hi = incident.start, incident.end + grace
        k = bisect.bisect_left(alarms, lo)
        if k < len(alarms) and alarms[k] <= hi:
            detected.append(alarms[k] - incident.start)
        else:
            misses += 1
    false_alarms = sum(
        1 for a in alarms if not any(i.start <= a <= i.end + grace for i in incidents)
    )
    return {
        "alarms": len(alarms),
        "false_alarms": false_alarms,
        "detected": len(detected),
        "misses": misses,
        "delay_s": _delay_stats(detected),
    }


def _never_fire(incidents: list[Incident]) -> dict[str, Any]:
    return {
        "alarms": 0,
        "false_alarms": 0,
        "detected": 0,
        "misses": len(incidents),
        "delay_s": _delay_stats([]),
    }


def _always_fire(
    incidents: list[Incident], numbers: list[int], coverage: _Coverage | None
) -> dict[str, Any]:
    wanted = set(numbers)
    first_seen: dict[int, float] = {}
    stretches = 0
    outside = False
    for active, t in coverage.runs if coverage is not None else []:
        relevant = active & wanted
        for k in relevant:
            first_seen.setdefault(k, t)
        if not relevant and not outside:
            stretches += 1
        outside = not relevant
    delays = [
        first_seen[k] - inc.start
        for k, inc in zip(numbers, incidents, strict=True)
        if k in first_seen
    ]
    return {
        "alarms": stretches + len(delays),
        "false_alarms": stretches,
        "detected": len(delays),
        "misses": len(incidents) - len(delays),
        "delay_s": _delay_stats(delays),
    }


def _alarm_times(transitions: list[dict[str, Any]], signal: str | None) -> list[float]:
    """Onsets: the first transition of each episode (ok -> ... -> ok) that names ``signal``
    (any transition leaving ok, for the model as a whole)."""
    alarms: list[float] = []
    in_episode = False
    counted = False
    for t in transitions:
        if t["from"] == "ok":
            in_episode, counted = True, False
        if t["to"] == "ok":
            in_episode, counted = False, False
            continue
        if not in_episode or counted:
            continue
        escalation = Level.parse(t["to"]) > Level.parse(t["from"])
        if escalation and (signal is None or signal in t["signals"]):
            alarms.append(t["ts"])
            counted = True
    return alarms


def score(
    trails: dict[str, ModelTrail],
    incidents: list[Incident],
    coverage: dict[str, _Coverage],
    grace: float,
) -> dict[str, Any]:
    """Score the policy's alarms against known incidents, beside never/always-fire baselines."""
    numbered = list(enumerate(incidents))
    models = sorted(set(trails) | {i.model for i in incidents})
    out: dict[str, Any] = {}
    totals = {
        name: dict.fromkeys(("alarms", "false_alarms", "detected", "misses"), 0)
        for name in ("policy", "never_fire", "always_fire")
    }
    for model in models:
        trail = trails.get(model)
        transitions = trail.transitions if trail is not None else []
        own = [(k, i) for k, i in numbered if i.model == model]
        signal_names: list[str] = []
        if trail is not None:
            signal_names = [s.signal_name for s in trail.signals]
        for _, inc in own:
            for name in inc.signals or ():
                if name not in signal_names:
                    signal_names.append(name)
        per_signal: dict[str, Any] = {}
        model_row: dict[str, Any] = {}
        for signal in [None, *signal_names]:
            concerned = [(k, i) for k, i in own if i.concerns(signal)]
            incs = [i for _, i in concerned]
            row = {
                "incidents": len(incs),
                "policy": _score_alarms(_alarm_times(transitions, signal), incs, grace),
                "never_fire": _never_fire(incs),
                "always_fire": _always_fire(incs, [k for k, _ in concerned], coverage.get(model)),
            }
            if signal is None:
                model_row = row
            else:
                per_signal[signal] = row
        for name, counts in totals.items():
            for key in counts:
                counts[key] += model_row[name][key]
        out[model] = {**model_row, "signals": per_signal}
    return {"grace_s": grace, "incidents": len(incidents), "total": totals, "models": out}


# -- the replay loop ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    events: list[Event] = field(default_factory=list)
    last_index: int = -1
    last_time: float = 0.0


@dataclass(slots=True, frozen=True)
class ReplayClock:
    """How the replay's event time ran: its span, what timed the events, and the shortest
    ``for`` of the replayed models (None without a model)."""

    first_ts: float | None
    last_ts: float | None
    shortest_for_s: float | None
    events_with_ts: int = 0
    events_with_record_ts: int = 0
    events_untimed: int = 0

    @property
    def span_s(self) -> float:
        if self.first_ts is None or self.last_ts is None:
            return 0.0
        return self.last_ts - self.first_ts

    def summary(self) -> dict[str, Any]:
        return {
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "span_s": round(self.span_s, 6),
            "shortest_for_s": self.shortest_for_s,
            "events_with_ts": self.events_with_ts,
            "events_with_record_ts": self.events_with_record_ts,
            "events_untimed": self.events_untimed,
        }

    def warnings(self, events: int) -> list[dict[str, str]]:
        """A clock that never moved over two or more events, or, over ``MANY_EVENTS`` or
        more, moved less than the shortest ``for``: no ``for`` could run out, so the replay
        cannot show the transitions the daemon would have made."""
        untimed = ""
        if self.events_untimed:
            untimed = (
                f"; {self.events_untimed} events have neither `ts` nor a recorded broker "
                "time (record the topic with this version of `driftwarden record`, which "
                "keeps it)"
            )
        if events >= 2 and self.span_s <= 0.0:
            return [
                {
                    "code": "clock_never_advanced",
                    "message": (
                        f"event time never advanced over {events} events (it stayed at "
                        f"{self.first_ts}): no `for` or `recover_after` can run out, so no "
                        f"transition is reported{untimed}"
                    ),
                }
            ]
        shortest = self.shortest_for_s
        if events >= MANY_EVENTS and shortest is not None and self.span_s < shortest:
            return [
                {
                    "code": "clock_shorter_than_for",
                    "message": (
                        f"event time advanced only {self.span_s:g} s over {events} events, "
                        f"less than the shortest `for` ({shortest:g} s): no breach can be "
                        f"held long enough to cause a transition{untimed}"
                    ),
                }
            ]
        return []


def _shortest_for(engine: Engine) -> float | None:
    fors = [s.for_s for monitor in engine.models.values() for s in monitor.signals]
    return min(fors) if fors else None


@dataclass(slots=True)
class ReplayResult:
    """What a replay found; ``summary()`` is the documented ``--summary`` JSON."""

    source: str
    lines: int
    events: int
    bad_lines: int
    bad: list[BadLine]
    dropped_events: int
    chunk_size: int
    first_ts: float | None
    last_ts: float | None
    elapsed_s: float
    trails: dict[str, ModelTrail]
    series: dict[str, SeriesRecorder]
    model_events: dict[str, int]
    final_state: dict[str, str]
    score: dict[str, Any] | None = None
    incidents: list[Incident] = field(default_factory=list)
    clock: ReplayClock = field(default_factory=lambda: ReplayClock(None, None, None))

    @property
    def warnings(self) -> list[dict[str, str]]:
        """What makes this replay's findings untrustworthy (``clock.warnings``)."""
        return self.clock.warnings(self.events)

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else math.inf

    def summary(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        for name in sorted(self.trails):
            trail = self.trails[name]
            models[name] = {
                "mode": trail.policy.mode,
                "events": self.model_events.get(name, 0),
                "final_state": self.final_state.get(name, "ok"),
                "transitions": trail.transitions,
                "flags": trail.flags,
                "alerts": trail.alerts,
                "signals": {
                    s.signal_name: {
                        "transitions": trail.per_signal.get(s.signal_name, [0, 0])[0],
                        "alerts": trail.per_signal.get(s.signal_name, [0, 0])[1],
                    }
                    for s in trail.signals
                },
            }
            if trail.coverage is not None:
                models[name]["coverage"] = trail.coverage
        out: dict[str, Any] = {
            "version": SUMMARY_VERSION,
            "source": self.source,
            "lines": self.lines,
            "events": self.events,
            "bad_lines": self.bad_lines,
            "bad": [{"line": b.line, "reason": b.reason, "detail": b.detail} for b in self.bad],
            "dropped_events": self.dropped_events,
            "chunk_size": self.chunk_size,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "run": {
                "elapsed_s": round(self.elapsed_s, 3),
                "events_per_s": round(self.events_per_s, 1) if self.elapsed_s > 0 else None,
            },
            "models": models,
        }
        out["clock"] = self.clock.summary()
        out["warnings"] = self.warnings
        if self.score is not None:
            out["score"] = self.score
        return out


ProgressHook = Callable[[int], None]


class Replay:
    """Runs one settings file's policies over a stream of recorded event lines.

    Parameters
    ----------
    settings
        The daemon's settings; ``models`` gives each model's policy, ``engine.max_models`` and
        ``kafka.max_record_bytes`` apply as they do live.
    chunk_size
        Events of one model applied at once (1: exact attribution of each transition).
    truth
        Known incidents; when given, ``run`` also scores the policy.
    grace
        Seconds after an incident's end during which a detection still counts.
    max_points
        Points kept per plotted series.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        truth: list[Incident] | None = None,
        grace: float = 0.0,
        max_points: int = 1200,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if grace < 0:
            raise ValueError(f"grace must be non-negative, got {grace}")
        self.settings = settings
        self.chunk_size = chunk_size
        self.truth = truth
        self.grace = grace
        self.max_points = max_points

    def run(
        self,
        lines: Iterator[bytes],
        *,
        source: str = "<events>",
        progress: ProgressHook | None = None,
        progress_every: int = 8192,
    ) -> ReplayResult:
        """Replay every line; ``progress(lines_done)`` is called every ``progress_every``."""
        settings = self.settings
        engine = Engine.for_settings(settings)
        decode = RecordedEventDecoder(max_bytes=settings.kafka.max_record_bytes).decode
        trails: dict[str, ModelTrail] = {}
        series: dict[str, SeriesRecorder] = {}
        model_events: dict[str, int] = {}
        pending: dict[str, _Pending] = {}
        coverage: dict[str, _Coverage] = {}
        windows: dict[str, list[tuple[float, float, int]]] = {}
        for k, incident in enumerate(self.truth or []):
            windows.setdefault(incident.model, []).append(
                (incident.start, incident.end + self.grace, k)
            )
        bad: list[BadLine] = []
        bad_count = 0
        events = 0
        #: Events timed by their ``ts``, by the recorded broker time, and by neither.
        by_ts = by_record = untimed = 0
        chunk = self.chunk_size
        clock = -math.inf
        first_ts: float | None = None
        next_tick = math.inf
        last_index = -1
        scoring = self.truth is not None

        def on_transitions(found: list[Transition], index: int) -> None:
            for t in found:
                trail = trails.get(t.model)
                if trail is None:
                    trail = trails[t.model] = ModelTrail(t.model, engine.models[t.model].policy)
                trail.record(t, index)

        def flush(model: str, box: _Pending) -> None:
            found = engine.apply(box.events, box.last_time)
            if found:
                on_transitions(found, box.last_index)
            monitor = engine.models.get(model)
            if monitor is not None:
                self._sample(series, monitor, box.last_time)
            box.events = []

        def tick_until(now: float) -> None:
            nonlocal next_tick
            for model, box in pending.items():
                if box.events:
                    flush(model, box)
            steps = 0
            while next_tick <= now and steps < MAX_TICKS_PER_GAP:
                found = engine.tick(next_tick)
                if found:
                    on_transitions(found, last_index)
                next_tick += TICK_S
                steps += 1
            if next_tick <= now:
                found = engine.tick(now)
                if found:
                    on_transitions(found, last_index)
                next_tick = math.floor(now / TICK_S) * TICK_S + TICK_S

        started = time.perf_counter()
        index = -1
        for index, line in enumerate(lines):
            if progress is not None and index % progress_every == 0:
                progress(index)
            decoded = decode(line.rstrip(b"\r\n"))
            if isinstance(decoded, BadRecord):
                bad_count += 1
                if len(bad) < MAX_BAD_KEPT:
                    bad.append(BadLine(index, decoded.reason.value, decoded.detail))
                continue
            if decoded.ts is not None:
                t = event_time(decoded, 0.0)
                by_ts += 1
            else:
                # The daemon times an event without ts by its receive time: the broker's
                # record timestamp is the nearest the file holds.
                recorded = record_time(decoded)
                if recorded is not None:
                    t = recorded
                    by_record += 1
                else:
                    t = clock if clock > -math.inf else 0.0
                    untimed += 1
            if t > clock:
                if first_ts is None:
                    first_ts = t
                    next_tick = math.floor(t / TICK_S) * TICK_S + TICK_S
                clock = t
                if clock >= next_tick:
                    tick_until(clock)
            events += 1
            model = decoded.model
            model_events[model] = model_events.get(model, 0) + 1
            if scoring:
                cover = coverage.get(model)
                if cover is None:
                    cover = coverage[model] = _Coverage(windows.get(model, []))
                cover.see(clock)
            box = pending.get(model)
            if box is None:
                box = pending[model] = _Pending()
            box.events.append(decoded)
            box.last_index = index
            box.last_time = clock
            last_index = index
            if len(box.events) >= chunk:
                flush(model, box)
        for model, box in pending.items():
            if box.events:
                flush(model, box)
        if clock > -math.inf:
            found = engine.tick(clock)
            if found:
                on_transitions(found, last_index)
        elapsed = time.perf_counter() - started
        if progress is not None:
            progress(index + 1)

        for model, monitor in engine.models.items():
            if model not in trails:
                trails[model] = ModelTrail(model, monitor.policy)
            trails[model].watch(monitor)
        result = ReplayResult(
            source=source,
            lines=index + 1,
            events=events,
            bad_lines=bad_count,
            bad=bad,
            dropped_events=engine.dropped_events,
            chunk_size=chunk,
            first_ts=first_ts,
            last_ts=clock if clock > -math.inf else None,
            elapsed_s=elapsed,
            trails=trails,
            series=series,
            model_events=model_events,
            final_state={m: mon.health.level.label for m, mon in engine.models.items()},
            incidents=list(self.truth or []),
            clock=ReplayClock(
                first_ts=first_ts,
                last_ts=clock if clock > -math.inf else None,
                shortest_for_s=_shortest_for(engine),
                events_with_ts=by_ts,
                events_with_record_ts=by_record,
                events_untimed=untimed,
            ),
        )
        if self.truth is not None:
            result.score = score(trails, self.truth, coverage, self.grace)
        return result

    def _sample(self, series: dict[str, SeriesRecorder], monitor: ModelMonitor, t: float) -> None:
        rec = series.get(monitor.model)
        if rec is None:
            rec = series[monitor.model] = SeriesRecorder(
                [s.name for s in monitor.signals],
                [
                    s.policy.thresholds is None or s.policy.thresholds.direction == "above"
                    for s in monitor.signals
                ],
                max_points=self.max_points,
            )
        elif len(rec.signals) != len(monitor.signals):
            # Discovery ended: the signals it added get their series from now on.
            known = set(rec.signals)
            for s in monitor.signals:
                if s.name not in known:
                    thresholds = s.policy.thresholds
                    rec.add_signal(s.name, thresholds is None or thresholds.direction == "above")
        observations = monitor.observations
        stats: list[float] = []
        limits: list[float] = []
        for name in rec.signals:
            obs = observations.get(name)
            stats.append(obs.statistic if obs is not None else math.nan)
            limits.append(obs.threshold if obs is not None else math.nan)
        rec.add(t, stats, limits)


def replay_file(
    path: str | Path,
    settings: Settings,
    *,
    progress: ProgressHook | None = None,
    **options: Any,
) -> ReplayResult:
    """Replay one JSON-lines file (gzip or not) with :class:`Replay`."""
    with open_events(path) as stream:
        return Replay(settings, **options).run(iter(stream), source=str(path), progress=progress)
