"""Publishing each watched model's health and signal Readings as Prometheus series, and
removing them once the model leaves this replica.

Labels are bound once per model and member (no label lookup per batch), and a gauge is set
only when its value may have changed: a detector hands back the same Reading object until it
tests again, and a health level is an enum member.

The per-model gauges (``MODEL_GAUGES``: most of /metrics at scale) also have their exposition
text kept per model, re-rendered at the next scrape only for the models whose series changed
since the last one, in the scrape's worker thread: a scrape costs the batch loop nothing per
series, and its thread what changed (``SeriesPublisher.exposition``; the Gauges stay the
values' truth).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.utils import floatToGoString

from monitor.observability.metrics import HEALTH_STATES, MODEL_GAUGES, Metrics

if TYPE_CHECKING:
    from detectors.base import Reading
    from monitor.config.policy import Level, Thresholds
    from monitor.engine.engine import ModelMonitor
    from monitor.engine.outcomes import OutcomeJoin

__all__ = ["MemberSeries", "ModelSeries", "OutcomeSeries", "SeriesPublisher"]

log = logging.getLogger(__name__)


def label_value(value: str) -> str:
    r"""``value`` escaped as prometheus_client's text format escapes a label value.

    >>> print(label_value('a"b\\c\nd'))
    a\"b\\c\nd
    """
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    """A sample's value as prometheus_client writes it (a Gauge holds ``float(value)``)."""
    text: str = floatToGoString(float(value))  # type: ignore[no-untyped-call]
    return text


class MemberSeries:
    """The bound series of one detector (a signal's member) of one model."""

    __slots__ = (
        "breached",
        "effect",
        "labels",
        "lines",
        "reading",
        "samples",
        "threshold",
        "thresholds_text",
        "value",
    )

    def __init__(
        self,
        value: Any,
        breached: Any,
        samples: Any,
        threshold: Any,
        *,
        labels: str = "",
        thresholds_text: str = "",
    ) -> None:
        self.value = value
        #: ``{model="...",signal="..."}``, escaped: the member's labels in its text.
        self.labels = labels
        #: The lines of its policy thresholds (constants), by level.
        self.thresholds_text = thresholds_text
        #: The Reading its lines were rendered from and its lines, one per family of
        #: signal (value, effect, threshold, breached, samples; None before the first).
        self.lines: tuple[Reading, tuple[str, str, str, str, str]] | None = None
        #: Bound on the first finite effect size: a series of NaN (a detector with no
        #: reference) only leaves gaps in a panel.
        self.effect: Any = None
        self.breached = breached
        self.samples = samples
        #: The detector's own threshold, for a signal with no policy thresholds (those are
        #: constants, set once when the member's series are bound).
        self.threshold = threshold
        #: The Reading last published (None before the first).
        self.reading: Reading | None = None


class OutcomeSeries:
    """The bound series of one model's outcome join. Counters add what this process saw: the
    counts a checkpoint restored are the starting point, not an increase."""

    __slots__ = ("evictions", "join", "outcomes", "pending", "published")

    def __init__(self, metrics: Metrics, model: str, join: OutcomeJoin) -> None:
        #: The join whose counts these are (a monitor restored anew has another).
        self.join = join
        counts = join.counts
        self.outcomes = [
            (result, metrics.outcomes.labels(model, result.value)) for result in counts.outcomes
        ]
        self.evictions = [
            (reason, metrics.outcome_evictions.labels(model, reason.value))
            for reason in counts.evicted
        ]
        # A join found after it already counted (restored, or started and fed in one batch
        # before its first publish) adds all it counted since the counts it started from.
        self.pending = metrics.outcome_pending.labels(model)
        start = join.baseline
        self.published = (dict(start.outcomes), dict(start.evicted))

    def publish(self, join: OutcomeJoin) -> None:
        counts = join.counts
        outcomes, evicted = self.published
        if counts.outcomes != outcomes:
            for result, child in self.outcomes:
                child.inc(counts.outcomes[result] - outcomes[result])
        if counts.evicted != evicted:
            for reason, child in self.evictions:
                child.inc(counts.evicted[reason] - evicted[reason])
        self.published = (dict(counts.outcomes), dict(counts.evicted))
        self.pending.set(len(join.pending))

    @staticmethod
    def remove(metrics: Metrics, model: str, *, counters: bool) -> None:
        with contextlib.suppress(KeyError):
            metrics.outcome_pending.remove(model)
        if counters:
            from monitor.engine.outcomes import Eviction, OutcomeResult

            for result in OutcomeResult:
                with contextlib.suppress(KeyError):
                    metrics.outcomes.remove(model, result.value)
            for reason in Eviction:
                with contextlib.suppress(KeyError):
                    metrics.outcome_evictions.remove(model, reason.value)


class ModelSeries:
    """The bound series of one model: its health, and one MemberSeries per member name."""

    __slots__ = (
        "label",
        "level",
        "members",
        "outcomes",
        "published_level",
        "states",
        "text",
        "version",
    )

    def __init__(self, level: Any, states: list[tuple[str, Any]], *, label: str = "") -> None:
        self.level = level
        #: The model's label value, escaped.
        self.label = label
        #: Counts the changes of its series (on the loop); its text is current while the
        #: version it was rendered at is this one.
        self.version = 0
        #: Its exposition text, one string per ``MODEL_GAUGES`` family, and the version it
        #: shows (None: never rendered).
        self.text: tuple[int, tuple[str, ...]] | None = None
        #: One gauge per health state (1 for the current one), by state name.
        self.states = states
        #: The level last published (None before the first).
        self.published_level: Level | None = None
        self.members: dict[str, MemberSeries] = {}
        self.outcomes: OutcomeSeries | None = None


#: About how many characters of text ``SeriesPublisher.exposition`` encodes at once.
_PIECE_CHARS = 256 * 1024

_STATE = "driftwarden_model_health_state"
_LEVEL = "driftwarden_model_health_level"
_VALUE = "driftwarden_signal_value"
_EFFECT = "driftwarden_signal_effect_size"
_THRESHOLD = "driftwarden_signal_threshold"
_BREACHED = "driftwarden_signal_breached"
_SAMPLES = "driftwarden_signal_samples"


def _render(series: ModelSeries) -> tuple[str, ...]:
    """One model's samples of each ``MODEL_GAUGES`` family, as its Gauges hold them (labels
    in prometheus_client's order: sorted by name)."""
    model = series.label
    level = series.published_level  # read once: states and level agree
    states = "".join(
        f'{_STATE}{{model="{model}",state="{name}"}} '
        f"{'1.0' if level is not None and name == level.label else '0.0'}\n"
        for name in HEALTH_STATES
    )
    health = f'{_LEVEL}{{model="{model}"}} {_number(int(level) if level is not None else 0)}\n'
    values, effects, thresholds, breached, samples = [], [], [], [], []
    for member in list(series.members.values()):
        r = member.reading  # one immutable Reading: a member's lines agree with each other
        if r is None:
            continue
        kept = member.lines
        if kept is not None and kept[0] is r:
            lines = kept[1]
        else:
            lines = _member_lines(member, r)
            member.lines = (r, lines)
        values.append(lines[0])
        effects.append(lines[1])
        thresholds.append(lines[2])
        breached.append(lines[3])
        samples.append(lines[4])
    return (
        states,
        health,
        "".join(values),
        "".join(effects),
        "".join(thresholds),
        "".join(breached),
        "".join(samples),
    )


def _member_lines(member: MemberSeries, r: Reading) -> tuple[str, str, str, str, str]:
    """A member's sample of each signal family for Reading ``r`` (as publish sets them)."""
    labels = member.labels
    return (
        f"{_VALUE}{{{labels}}} {_number(r.statistic)}\n",
        # The effect series is bound exactly while the effect is finite.
        f"{_EFFECT}{{{labels}}} {_number(r.effect)}\n" if math.isfinite(r.effect) else "",
        (
            f'{_THRESHOLD}{{level="detector",{labels}}} {_number(r.threshold)}\n'
            if member.threshold is not None
            else member.thresholds_text
        ),
        f"{_BREACHED}{{{labels}}} {'1.0' if r.breached else '0.0'}\n",
        f"{_SAMPLES}{{{labels}}} {_number(r.samples)}\n",
    )


class SeriesPublisher:
    """The per-model series of one daemon: published after each batch (the models it moved)
    and each second (those the tick moved: ``publish_tick``), removed when a model is handed
    over or dropped."""

    def __init__(self, metrics: Metrics, monitors: Mapping[str, ModelMonitor]) -> None:
        self.metrics = metrics
        #: The engine's monitors by model (the engine's own, live mapping).
        self.monitors = monitors
        self._models: dict[str, ModelSeries] = {}
        #: Bound children of driftwarden_model_events_total (no label lookup per batch).
        self._event_counters: dict[str, Any] = {}
        #: The HELP and TYPE lines of each ``MODEL_GAUGES`` family (built at the first scrape).
        self._headers: list[str] = []
        #: Models published (after a batch) since the last ``publish_tick``.
        self._published_since_tick: set[str] = set()
        metrics.bind_model_series(self)

    def count_events(self, received: Iterable[tuple[str, int]]) -> None:
        """Add each model's events of a batch to its driftwarden_model_events_total."""
        counters = self._event_counters
        for model, count in received:
            counter = counters.get(model)
            if counter is None:
                counter = counters[model] = self.metrics.model_events.labels(model)
            counter.inc(count)

    def publish(self, models: Iterable[str]) -> None:
        """Set the series of each of ``models`` that has a monitor (others are skipped)."""
        m = self.metrics
        monitors = self.monitors
        published = self._models
        done = self._published_since_tick
        for model in models:
            done.add(model)
            monitor = monitors.get(model)
            if monitor is None:
                continue
            series = published.get(model)
            if series is None:
                series = published[model] = ModelSeries(
                    m.health_level.labels(model),
                    [(name, m.health_state.labels(model, name)) for name in HEALTH_STATES],
                    label=label_value(model),
                )
            if model not in self._event_counters:
                # From the first publish on, also for a model restored from a checkpoint
                # that has received nothing yet: "no events" needs a series that stays flat.
                self._event_counters[model] = m.model_events.labels(model)
            level = monitor.health.level
            if series.published_level is not level:
                series.level.set(int(level))
                for name, child in series.states:
                    child.set(1 if name == level.label else 0)
                series.published_level = level
                series.version += 1
            join = monitor.outcomes
            if join is not None:
                if series.outcomes is None or series.outcomes.join is not join:
                    # A monitor restored in place of the one published counts from its own
                    # checkpoint's counts (maybe fewer: a counter never goes down).
                    series.outcomes = OutcomeSeries(m, model, join)
                series.outcomes.publish(join)
            members = series.members
            for signal_monitor in monitor.signals:
                for member in signal_monitor.members:
                    r = member.reading
                    member_series = members.get(member.name)
                    if member_series is None:
                        member_series = members[member.name] = self._bind_member(
                            model, member.name, signal_monitor.policy.thresholds
                        )
                    elif member_series.reading is r:
                        continue
                    member_series.reading = r
                    # After the Reading: a render in the scrape's thread between the two
                    # keeps the old version with its text, and renders again next time.
                    series.version += 1
                    member_series.value.set(r.statistic)
                    if math.isfinite(r.effect):
                        if member_series.effect is None:
                            member_series.effect = m.signal_effect.labels(model, member.name)
                        member_series.effect.set(r.effect)
                    elif member_series.effect is not None:
                        member_series.effect = None
                        with contextlib.suppress(KeyError):
                            m.signal_effect.remove(model, member.name)
                    member_series.breached.set(1 if r.breached else 0)
                    member_series.samples.set(r.samples)
                    if member_series.threshold is not None:
                        member_series.threshold.set(r.threshold)

    def publish_tick(self, ticked: Iterable[str], moved: Iterable[str] = ()) -> None:
        """The tick's publish: the models it evaluated (``ticked``), those a batch evaluated
        since the last tick (``moved``) that no publish showed since, those never published
        yet (restored from a checkpoint, nothing received), and those keeping an outcome
        join (whose counts other models' batches may move). Every other model's series
        already show what it holds."""
        monitors = self.monitors
        models = set(moved)
        models -= self._published_since_tick
        models.update(ticked)
        models.update(monitors.keys() - self._models.keys())
        models.update(model for model, m in monitors.items() if m.outcomes is not None)
        self.publish(models)
        self._published_since_tick = set()

    def _bind_member(self, model: str, member: str, thresholds: Thresholds | None) -> MemberSeries:
        m = self.metrics
        detector_threshold = (
            None if thresholds is not None else m.signal_threshold.labels(model, member, "detector")
        )
        labels = f'model="{label_value(model)}",signal="{label_value(member)}"'
        lines = []
        if thresholds is not None:
            for level, bound in thresholds.items():
                m.signal_threshold.labels(model, member, level.label).set(bound)
                lines.append(f'{_THRESHOLD}{{level="{level.label}",{labels}}} {_number(bound)}\n')
        return MemberSeries(
            m.signal_value.labels(model, member),
            m.signal_breached.labels(model, member),
            m.signal_samples.labels(model, member),
            detector_threshold,
            labels=labels,
            thresholds_text="".join(lines),
        )

    def exposition(self) -> list[bytes]:
        """The ``MODEL_GAUGES`` families' text of every published model (each family's HELP
        and TYPE, then its samples model after model), UTF-8, in pieces of about
        ``_PIECE_CHARS`` (one join and encoding of tens of MB would hold the GIL, hence the
        event loop, for as long).

        Runs in the scrape's worker thread while the loop goes on publishing: it renders
        again only the models whose series changed since their text was rendered (their
        version moved), each member from one Reading. A model changed during the render
        shows its state before or after that change, and its text is rendered again at the
        next scrape (it keeps the version it read first).
        """
        if not self._headers:
            headers = []
            for name in MODEL_GAUGES:
                (family,) = getattr(self.metrics, name).describe()
                doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
                headers.append(f"# HELP {family.name} {doc}\n# TYPE {family.name} {family.type}\n")
            self._headers = headers
        texts = []
        for series in list(self._models.values()):
            version = series.version
            found = series.text
            if found is None or found[0] != version:
                found = series.text = (version, _render(series))
            texts.append(found[1])
        pieces: list[bytes] = []
        buffer: list[str] = []
        size = 0
        for i, header in enumerate(self._headers):
            buffer.append(header)
            for text in texts:
                part = text[i]
                buffer.append(part)
                size += len(part)
                if size >= _PIECE_CHARS:
                    pieces.append("".join(buffer).encode("utf-8"))
                    buffer, size = [], 0
        pieces.append("".join(buffer).encode("utf-8"))
        return pieces

    def unpublish(self, model: str, *, counters: bool = False) -> None:
        """Remove a model's series once this replica no longer owns it, so dashboards and
        rollout gates never read a stale state from a replica that handed the model over.

        ``counters``: also its counters (transitions, review samples), for a model dropped
        for good; otherwise their series would grow with every model ever seen. The series
        are found by their labels, not by a scan of every series: evicting a model costs
        the same with 10 models published as with 10,000.
        """
        m = self.metrics
        series = self._models.pop(model, None)
        if self._event_counters.pop(model, None) is not None:
            m.model_events.remove(model)
        if series is not None:
            m.health_level.remove(model)
            for state in HEALTH_STATES:
                m.health_state.remove(model, state)
            levels = ("detector", *HEALTH_STATES)
            for member in series.members:
                for metric in (
                    m.signal_value,
                    m.signal_effect,
                    m.signal_breached,
                    m.signal_samples,
                ):
                    metric.remove(model, member)
                for level in levels:
                    m.signal_threshold.remove(model, member, level)
            if series.outcomes is not None:
                OutcomeSeries.remove(m, model, counters=counters)
        if counters:
            for before in HEALTH_STATES:
                for after in HEALTH_STATES:
                    m.transitions.remove(model, before, after)
            m.review_events.remove(model)
