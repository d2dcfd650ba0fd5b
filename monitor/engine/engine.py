"""The engine: routes each batch's events by model id to that model's monitor, which feeds
its signals' detectors and its health state machine. Memory is bounded by the policy's named
models plus ``max_models`` others (``monitor.engine.admission`` decides who gets a monitor).
A model whose policy discovers first observes what its events carry, then watches it
(``monitor.engine.discovery``); the engine hands the signals so built to the audit trail.
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from detectors.base import INCONCLUSIVE, Detector, Reading, Verdict
from detectors.registry import build_detector
from monitor.config.policy import LABEL_SOURCES, Level, ModelPolicy, SignalPolicy
from monitor.engine.admission import Admission, Refusal
from monitor.engine.columns import ColumnSet, EventColumns, Extractor, extractors_for
from monitor.engine.decode import DecodedBatch
from monitor.engine.discovery import (
    CoverageNotes,
    CoveredSignal,
    FieldSeen,
    ObservedSchema,
    compact,
    coverage,
    coverage_notes,
    outcome_coverage,
)
from monitor.engine.events import Event
from monitor.engine.health import HealthMachine, SignalObservation, Transition
from monitor.engine.outcomes import OutcomeBudget, OutcomeJoin, wants_join

if TYPE_CHECKING:
    from monitor.config.settings import Settings
    from monitor.engine.banks import Banks
    from monitor.engine.lane import LanePlan

__all__ = ["CoverageBuilt", "Engine", "ModelMonitor", "SignalMonitor"]

#: A model's events in one batch: the batch's columns and the model's ``[start:end]``.
Span = tuple[EventColumns, int, int]


def _joined(parts: list[Any]) -> Any:
    """One member's values of several spans, as one array (or list, for categories)."""
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [value for part in parts for value in part]


log = logging.getLogger(__name__)

_LABEL = operator.attrgetter("label")

#: Joined outcomes a discovering model sees before it gains its ground-truth signals: enough
#: to tell a class from a regression target (one 0/1 value would not).
GAIN_AFTER_JOINED = 20

#: Seconds a model's oldest waiting span may wait before the tick feeds it (``Engine.tick``).
#: Waiting events change no Reading, so this bounds only memory: a waiting span keeps its
#: whole batch's columns alive, so about this many seconds of batches (plus a tick) stay
#: held. Most models reach their next test sooner and are fed with it; 0 feeds every
#: waiting span at every tick (the behaviour before, kept for the equivalence tests).
FLUSH_AFTER_S = 5.0


@dataclass(slots=True)
class Member:
    """One detector of a signal (a signal over a feature family has one per feature)."""

    name: str
    extract: Extractor
    detector: Detector
    reading: Reading = INCONCLUSIVE
    last_conclusive_at: float | None = None


@dataclass(slots=True)
class SignalMonitor:
    """One signal of one model: its detectors, latest readings and level."""

    policy: SignalPolicy
    for_s: float
    members: list[Member]
    level: Level = Level.OK
    #: The member whose reading sets the signal's level (the worst one).
    worst: Member | None = None
    created_at: float = 0.0
    #: Ground truth comes in bursts (outcome events, apart from the predictions): a span with
    #: no label leaves the Reading as it was instead of making it inconclusive, which would
    #: end a breach being held for ``for``. Only without a ``no_data`` rule, which reads it.
    sparse: bool = False

    @property
    def name(self) -> str:
        return self.policy.signal_name

    def update(self, events: Sequence[Event], now: float) -> None:
        self.update_spans([(EventColumns(events), 0, len(events))], now)

    def update_spans(
        self,
        spans: list[Span],
        now: float,
        banks: Banks | None = None,
        monitor: ModelMonitor | None = None,
    ) -> None:
        """Feed each member its column's ``[start:end]`` slices of ``spans`` (this model's
        events of one or more batches), in one call per member. With ``banks``, what a bank
        member gets is recorded for the batch's ``Banks.feed`` instead (for ``monitor``)."""
        inconclusive = Verdict.INCONCLUSIVE
        single = spans[0] if len(spans) == 1 else None
        recording = banks is not None and monitor is not None and banks.collecting
        for member in self.members:
            extract = member.extract
            if single is not None:
                values = single[0].get(extract)[single[1] : single[2]]
            else:
                parts = [cols.get(extract)[start:end] for cols, start, end in spans]
                if recording and banks is not None and monitor is not None:
                    # A bank takes the parts as they are: joined once for all its members.
                    sparse = self.sparse and all(np.isnan(part).all() for part in parts)
                    if not sparse and banks.record(monitor, member, parts, now):
                        continue
                values = _joined(parts)
            if self.sparse and np.isnan(values).all():
                continue
            if (
                recording
                and banks is not None
                and monitor is not None
                and banks.record(monitor, member, [values], now)
            ):
                continue
            reading = member.detector.update_many(values)
            member.reading = reading
            if reading.verdict is not inconclusive:
                member.last_conclusive_at = now

    def evaluate(self, now: float) -> SignalObservation:
        thresholds = self.policy.thresholds
        level = Level.OK
        worst = self.members[0]
        for member in self.members:
            reading = member.reading
            if reading.verdict is Verdict.INCONCLUSIVE:
                member_level = self._no_data_level(member, now)
            elif thresholds is not None:
                member_level = thresholds.level_of(reading.statistic)
            elif reading.breached:
                member_level = Level.parse(self.policy.level)
            else:
                member_level = Level.OK
            if member_level > level:
                level, worst = member_level, member
        self.level, self.worst = level, worst
        reading = worst.reading
        threshold = reading.threshold
        if thresholds is not None and level is not Level.OK:
            threshold = dict(thresholds.items()).get(level, threshold)
        return SignalObservation(level, reading.statistic, threshold, reading.effect, self.for_s)

    def _no_data_level(self, member: Member, now: float) -> Level:
        if self.policy.no_data is None:
            return Level.OK
        since = (
            member.last_conclusive_at if member.last_conclusive_at is not None else self.created_at
        )
        if now - since >= self.policy.no_data_after:
            return Level.parse(self.policy.no_data)
        return Level.OK


def _signal_monitor(
    signal: SignalPolicy, policy: ModelPolicy, now: float, seed: int, banks: Banks | None = None
) -> SignalMonitor:
    members_spec = extractors_for(signal)
    spec = signal.detector_spec
    build = build_detector if banks is None else banks.build
    members = [
        Member(name, extract, build(spec, family_size=len(members_spec), seed=seed))
        for name, extract in members_spec
    ]
    for_s = signal.for_ if signal.for_ is not None else policy.health.for_
    sparse = signal.source in LABEL_SOURCES and signal.no_data is None
    return SignalMonitor(signal, for_s, members, created_at=now, sparse=sparse)


@dataclass(frozen=True, slots=True)
class CoverageBuilt:
    """A model's signals, built once its discovery ended: what the audit trail records."""

    model: str
    at: float
    signals: list[CoveredSignal]


@dataclass(slots=True)
class ModelMonitor:
    """All signals and the health state of one model.

    A model whose policy ``discovers`` starts in discovery: its named signals are built at
    once and fed every event; its first ``auto.discover_events`` events (or those of its
    first ``auto.discover_within``) are only observed into ``schema``, then the signals
    :func:`~monitor.engine.discovery.coverage` gives are added (the named ones keep their
    state) and fed from the next event on. Nothing is observed after that.
    """

    model: str
    policy: ModelPolicy
    signals: list[SignalMonitor]
    health: HealthMachine
    events: int = 0
    last_event_at: float | None = None
    model_version: str | None = None
    observations: dict[str, SignalObservation] = field(default_factory=dict)
    #: Spans applied to the model but not yet fed to its detectors (see ``apply_span``).
    deferred: list[Span] = field(default_factory=list)
    deferred_events: int = 0
    #: The ``now`` of the oldest span in ``deferred`` and of the newest (None: none waits).
    deferred_since: float | None = None
    deferred_at: float | None = None
    #: Events that can wait before some detector's next test; None: none can wait.
    until_test: int | None = None
    #: False: every span goes to the detectors at once (the reference behaviour, for tests).
    defer: bool = True
    _columns: ColumnSet | None = None
    #: What the model's events carried (None: its policy does not discover).
    schema: ObservedSchema | None = None
    #: Observing ``schema``: the discovered signals are not built yet.
    discovering: bool = False
    #: When discovery started (the model's first event, or its first restore with no schema).
    discovery_started_at: float = 0.0
    #: The signals watched, where each comes from and why (see ``discovery.coverage``).
    covered: list[CoveredSignal] = field(default_factory=list)
    #: What discovery saw and left unwatched (set when it ends).
    notes: CoverageNotes | None = None
    #: Where the monitor reports its signals built at the end of discovery (the engine's).
    announce: list[CoverageBuilt] | None = None
    #: The outcome join (``monitor.engine.outcomes``); None while the model keeps none.
    outcomes: OutcomeJoin | None = None
    #: Signals added after the model's were built (``add_signals``): a checkpoint keeps them.
    added: list[CoveredSignal] = field(default_factory=list)
    #: What the joined outcomes carried, until the ground-truth signals are gained.
    outcome_schema: ObservedSchema | None = None
    seed: int = 0
    #: The engine's detector banks (None: every detector per object, fed at once).
    banks: Banks | None = None
    #: ``until_test`` waits for the batch's bank feeds (``Banks.feed``) to be known.
    until_stale: bool = False
    #: Readings or signals may have changed since the last ``evaluate`` (a new or restored
    #: monitor counts as changed): the tick evaluates it even when it is ``idle``.
    unevaluated: bool = True
    #: The earliest time a ``no_data`` rule can raise a level that the last ``evaluate``
    #: found below it (None: none can on the clock alone; see ``clock_due``).
    no_data_due_at: float | None = None
    #: The bank lane's plan for ``signals`` (``monitor.engine.lane``), once built.
    _lane_plan: LanePlan | None = None
    _lane_built: bool = False

    @classmethod
    def build(
        cls, model: str, policy: ModelPolicy, now: float, seed: int = 0, banks: Banks | None = None
    ) -> ModelMonitor:
        # Discovering: the named signals at once (``coverage`` of no schema is just them).
        signals = [_signal_monitor(signal, policy, now, seed, banks) for signal in policy.signals]
        monitor = cls(
            model, policy, signals, HealthMachine(model, policy.health), seed=seed, banks=banks
        )
        if policy.discovers:
            monitor.schema = ObservedSchema()
            monitor.discovering = True
            monitor.discovery_started_at = now
            monitor.covered = coverage(policy, None)
        if wants_join(policy):
            monitor.outcomes = OutcomeJoin(policy.outcomes)
        return monitor

    def coverage(self) -> list[CoveredSignal]:
        """The signals watched now, with their origin and reason."""
        if self.covered:
            return self.covered
        return coverage(self.policy, None)  # no discovery: the named signals

    def add_signals(self, covered: Iterable[CoveredSignal], now: float) -> list[CoveredSignal]:
        """Watch ``covered`` too, from now on (one named like a signal already watched is
        left out); returns those added. The events waiting for a test go to the signals that
        were there when they came."""
        present = {signal.name for signal in self.signals}
        fresh: list[CoveredSignal] = []
        for found in covered:
            if found.name not in present:
                present.add(found.name)
                fresh.append(found)
        if not fresh:
            return []
        self.flush(now)
        for found in fresh:
            self.signals.append(
                _signal_monitor(found.policy, self.policy, now, self.seed, self.banks)
            )
        self.covered = [*self.coverage(), *fresh]
        self.added += fresh
        self.signals_changed()
        self.unevaluated = True
        self.until_test = self._until_test()
        return fresh

    def join_outcomes(
        self, columns: EventColumns, start: int, end: int, now: float, budget: OutcomeBudget | None
    ) -> None:
        """Join this model's outcome events of ``columns.events[start:end]`` to the
        predictions it kept (and keep its new ones): before any column of the batch is built,
        since the label-based columns read what an outcome met."""
        join = self.outcomes
        events = columns.events
        if join is None:
            if self.policy.outcomes.join != "auto" or not any(
                events[i].label is not None and events[i].prediction is None
                for i in range(start, end)
            ):
                return
            # ``join: auto``: the model's first outcome event; its predictions are kept from
            # now on (those before went unkept: docs/outcomes.md, "When predictions are kept").
            join = self.outcomes = OutcomeJoin(self.policy.outcomes)
            if self.policy.discovers:
                self.outcome_schema = ObservedSchema()
        if budget is not None and join.budget is None:
            join.budget = budget
            budget.enlist(join, now)
        joined = join.observe(events, start, end, now)
        if not joined:
            return
        columns.joined.update(joined)
        schema = self.outcome_schema
        # While discovering, the observed schema sees the outcomes itself (``end_discovery``).
        if schema is not None and not self.discovering:
            self._gain_outcome_signals(schema, [(events[i], p) for i, p in joined.items()], now)

    def _gain_outcome_signals(
        self, schema: ObservedSchema, joined: list[tuple[Event, Any]], now: float
    ) -> None:
        """Outcomes came after the model's signals were discovered: count what the joined
        ones carry and, after a few, gain the signals of ground truth (``add_signals``)."""
        for event, prediction in joined:
            schema.observe([event])
            schema.fields["prediction"] = seen = schema.fields.get("prediction") or FieldSeen()
            seen.count(prediction if not isinstance(prediction, bytes) else "category")
        if schema.outcomes < GAIN_AFTER_JOINED:
            return
        if self.outcomes is not None and self.outcomes.counts.confident:
            schema.fields["confidence"] = FieldSeen(numeric=self.outcomes.counts.confident)
        self.outcome_schema = None
        gained = self.add_signals(
            outcome_coverage(self.policy, schema, (s.name for s in self.signals)), now
        )
        if gained:
            log.info(
                "model %r: outcomes arrived, now also watching %s",
                self.model,
                ", ".join(g.name for g in gained),
            )

    def apply(self, events: Sequence[Event], now: float) -> None:
        columns = EventColumns(events)
        self.join_outcomes(columns, 0, len(events), now, None)
        self.apply_span(columns, 0, len(events), now)

    def apply_span(self, columns: EventColumns, start: int, end: int, now: float) -> bool:
        """Apply this model's events, ``columns.events[start:end]``; False when they only
        wait (no Reading can have changed).

        While every detector is between tests (fixed reference ready, ``min_samples`` in
        the window), events that end no stride and miss no value change no Reading: they
        wait, and enter the detectors together with the events that reach the next test
        (or at ``flush``). The detectors then see the same values in the same order and
        test at the same points, at a fraction of the per-call cost when a model gets a few
        events per batch.
        """
        n = end - start
        self.events += n
        self.last_event_at = now
        version = columns.events[end - 1].model_version
        if version is not None:
            self.model_version = version
        if self.discovering:
            return self._discover(columns, start, end, now)
        return self._apply(columns, start, end, now)

    def _discover(self, columns: EventColumns, start: int, end: int, now: float) -> bool:
        """Observe the span's events that discovery still needs (the named signals get them
        all); end discovery when it has enough, and feed the rest to every signal."""
        schema = self.schema
        assert schema is not None
        left = self.policy.auto.discover_events - schema.events
        if left <= 0 or self.discovery_due(now):
            self.end_discovery(now)
            return self._apply(columns, start, end, now)
        cut = min(end, start + left)
        schema.observe(columns.events[start:cut])
        fed = self._apply(columns, start, cut, now)
        if schema.events < self.policy.auto.discover_events:
            return fed
        self.end_discovery(now)
        if cut < end:
            self._apply(columns, cut, end, now)
        return True

    def discovery_due(self, now: float) -> bool:
        """Discovery has run ``auto.discover_within`` and observed at least one event."""
        schema = self.schema
        return (
            self.discovering
            and schema is not None
            and schema.events > 0
            and now - self.discovery_started_at >= self.policy.auto.discover_within
        )

    def end_discovery(self, now: float, *, announce: bool = True) -> None:
        """Build the signals the observed schema gives: the named ones keep their monitor
        (and state), the others start now. ``announce``: report them to the engine."""
        self.flush(now)  # what the named signals hold back goes in under the old set
        self.discovering = False
        covered = coverage(self.policy, self.schema)
        built = {signal.name: signal for signal in self.signals}
        self.signals = [
            built.get(c.name) or _signal_monitor(c.policy, self.policy, now, self.seed, self.banks)
            for c in covered
        ]
        if self.banks is not None:
            kept = {id(signal) for signal in self.signals}
            self.banks.release([m for s in built.values() if id(s) not in kept for m in s.members])
        self.covered = covered
        self.unevaluated = True
        if self.schema is not None:
            self.notes = coverage_notes(self.policy, self.schema)
            compact(self.policy, self.schema)  # what it keeps from now on: bounded
        self.signals_changed()
        self.until_test = self._until_test()
        if not announce:
            return  # rebuilt as they were (a restore): nothing new to tell
        if self.announce is not None:
            self.announce.append(CoverageBuilt(self.model, now, covered))
        log.debug(
            "model %r: discovery over after %d events: %d signals watched",
            self.model,
            self.schema.events if self.schema is not None else 0,
            len(covered),
        )

    def _apply(self, columns: EventColumns, start: int, end: int, now: float) -> bool:
        n = end - start
        if self.until_stale:
            self.until_test = self._until_test()
        until = self.until_test
        if until is None:  # nothing waits (``_feed`` empties the spans when it sets None)
            self._feed_span(columns, start, end, now)
            return True
        complete = columns.complete(self.column_set(), start, end)
        if complete and self.deferred_events + n < until:
            if not self.deferred:
                self.deferred_since = now
            self.deferred_at = now
            self.deferred.append((columns, start, end))
            self.deferred_events += n
            return False
        if complete:
            self.deferred.append((columns, start, end))
            self._feed(self.deferred, now)
        else:
            # A value is missing: a detector may get none of this span, which its Reading
            # says (inconclusive). The waiting spans go first, on their own, as they came.
            self.flush(now)
            self._feed_span(columns, start, end, now)
        return True

    def _feed_span(self, columns: EventColumns, start: int, end: int, now: float) -> None:
        """Feed one span; a span of outcome events only (a label, no prediction: ground truth
        arriving on its own) carries no inference data, so only the signals that read labels
        get it: the others keep their Readings instead of turning inconclusive, which would
        end a breach being held for ``for`` every time a batch brings only outcomes."""
        events = columns.events
        if events[start].prediction is None and all(
            events[i].label is not None and events[i].prediction is None for i in range(start, end)
        ):
            labelled = [s for s in self.signals if s.policy.source in LABEL_SOURCES]
            self.unevaluated = True
            for signal in labelled:
                signal.update_spans([(columns, start, end)], now, self.banks, self)
            self._refresh_until()
            return
        self._feed([(columns, start, end)], now)

    def flush(self, now: float) -> None:
        """Feed the detectors the events still waiting (no test is due in them), as fed when
        the last of them came (``deferred_at``, as if each span had gone in with its batch):
        what a checkpoint taken while they wait says (``conclusive_at``), so that when the
        flush comes (a tick, a value missing, discovery ending) changes nothing."""
        if self.deferred:
            self._feed(self.deferred, self.deferred_at if self.deferred_at is not None else now)

    def flush_due(self, now: float, after_s: float) -> bool:
        """Events wait, the oldest of them ``after_s`` or longer (see ``FLUSH_AFTER_S``)."""
        since = self.deferred_since
        return bool(self.deferred) and since is not None and now - since >= after_s

    def waiting(self, member: Member) -> Any | None:
        """``member``'s values of the events that wait (None when none do), read without
        feeding them: a checkpoint saves them beside the detector state, which lacks them,
        so that saving changes nothing. Fed to a detector they run no test (see
        ``apply_span``)."""
        if not self.deferred:
            return None
        extract = member.extract
        return _joined([cols.get(extract)[start:end] for cols, start, end in self.deferred])

    def conclusive_at(self, member: Member) -> float | None:
        """When ``member``'s Reading was last conclusive, counting the events that wait as fed
        when the last of them came (they leave the Reading as it is): a checkpoint's value."""
        if self.deferred and member.reading.verdict is not Verdict.INCONCLUSIVE:
            return self.deferred_at
        return member.last_conclusive_at

    def _feed(self, spans: list[Span], now: float) -> None:
        self.unevaluated = True
        banks = self.banks
        # The bank lane takes the whole feed, gathered with the batch's other models' by
        # column (``monitor.engine.lane``); else member by member.
        if banks is None or not banks.take_lane(self, spans, now):
            for signal in self.signals:
                signal.update_spans(spans, now, banks, self)
        self.deferred = []
        self.deferred_events = 0
        self.deferred_since = self.deferred_at = None
        self._refresh_until()

    def _refresh_until(self) -> None:
        """``until_test`` after a feed: now, or once the batch's bank feeds ran."""
        if self.banks is not None and self.banks.pending(self):
            self.until_stale = True
        else:
            self.until_test = self._until_test()

    def _until_test(self) -> int | None:
        # The detectors' state is read: this model's feeds recorded for the batch go in now.
        if self.banks is not None and self.banks.pending(self):
            self.banks.feed_now(self)
        self.until_stale = False
        if not self.defer:
            return None
        fewest: int | None = None
        for signal in self.signals:
            if signal.policy.no_data is not None:
                return None  # the no-data clock reads every call's Reading
            for member in signal.members:
                until = member.detector.events_until_test()
                if until is None:
                    return None
                if fewest is None or until < fewest:
                    fewest = until
        return fewest

    def lane_plan(self) -> LanePlan | None:
        """The bank lane's plan for the signals watched now (None: they keep the member by
        member feed), built again when they change."""
        plan = self._lane_plan
        if not self._lane_built or (plan is not None and not plan.fits(self.signals)):
            from monitor.engine.lane import plan_for

            plan = self._lane_plan = plan_for(self)
            self._lane_built = True
        return plan

    def signals_changed(self) -> None:
        """The signals or their detectors changed: what is derived from them is rebuilt."""
        self._columns = None
        self._lane_plan = None
        self._lane_built = False

    def column_set(self) -> ColumnSet:
        """Every column this model's detectors read (models of one policy share the key)."""
        found = self._columns
        if found is None:
            extracts = [member.extract for signal in self.signals for member in signal.members]
            found = self._columns = ColumnSet.of(extracts)
        return found

    @property
    def idle(self) -> bool:
        """Healthy with no breach being held or recovery being timed: with unchanged
        Readings, an evaluation would change nothing."""
        health = self.health
        return (
            health.level is Level.OK
            and health.healthy_since is None
            and not any(health.breach_since.values())
        )

    def clock_due(self, now: float) -> bool:
        """Whether an evaluation at ``now`` may change anything although no event came: the
        Readings or signals changed since the last one, a breach is held or a recovery
        timed (not ``idle``), or a ``no_data`` rule's time has come. Otherwise it would
        give the same levels, observations and health as the last one."""
        if self.unevaluated or not self.idle:
            return True
        due = self.no_data_due_at
        return due is not None and now >= due

    def evaluate(self, now: float) -> Transition | None:
        self.observations = {s.name: s.evaluate(now) for s in self.signals}
        self.unevaluated = False
        self.no_data_due_at = self._next_no_data(now)
        return self.health.observe(now, self.observations)

    def _next_no_data(self, now: float) -> float | None:
        """When a ``no_data`` rule not yet met at ``now`` would be (its member stays
        inconclusive until then: a Reading that changes sets ``unevaluated``)."""
        due: float | None = None
        for signal in self.signals:
            policy = signal.policy
            if policy.no_data is None:
                continue
            for member in signal.members:
                if member.reading.verdict is not Verdict.INCONCLUSIVE:
                    continue
                since = (
                    member.last_conclusive_at
                    if member.last_conclusive_at is not None
                    else signal.created_at
                )
                at = since + policy.no_data_after
                # As ``_no_data_level`` compares: ``now - since >= no_data_after``.
                if not now - since >= policy.no_data_after and (due is None or at < due):
                    due = at
        return due


class Engine:
    """Routes events to per-model monitors, creating them as :class:`Admission` allows:
    named models always, other ids up to ``max_models`` (then by probation and eviction).
    """

    def __init__(
        self,
        policy_for: Callable[[str], ModelPolicy],
        *,
        max_models: int,
        named: Iterable[str] = (),
        admit_after_events: int = 3,
        probation_window_s: float = 300.0,
        evict_idle_s: float = 600.0,
        may_evict: Callable[[str], bool] | None = None,
        seed: int = 0,
        defer: bool = True,
        max_pending_outcomes: int = 1_000_000,
        banks: bool = True,
        flush_after_s: float = FLUSH_AFTER_S,
        lane: bool = True,
    ) -> None:
        from monitor.engine.banks import Banks

        if not 0.0 <= flush_after_s < math.inf:
            raise ValueError(f"flush_after_s must be a finite number >= 0, got {flush_after_s!r}")
        self.policy_for = policy_for
        #: The windowed detectors of every model as rows of one bank per spec, fed once per
        #: batch (None: every detector per object, the reference path of the equivalence tests).
        #: ``lane``: the banks take whole model feeds column by column (``monitor.engine.lane``);
        #: False keeps every feed member by member (the equivalence tests' and bench's other path).
        self.banks: Banks | None = Banks(lane=lane) if banks else None
        #: Every model's pending predictions together (``engine.max_pending_outcomes``).
        self.outcome_budget = OutcomeBudget(max_pending_outcomes)
        self.defer = defer
        #: How long a model's events may wait before the tick feeds them (``FLUSH_AFTER_S``).
        self.flush_after_s = flush_after_s
        self.max_models = max_models
        self.admission = Admission(
            max_models=max_models,
            named=named,
            admit_after_events=admit_after_events,
            probation_window_s=probation_window_s,
            evict_idle_s=evict_idle_s,
        )
        #: The caller's veto on an eviction (the daemon: the model holds no flag and has no
        #: open incident); the engine itself checks the model is healthy.
        self.may_evict = may_evict
        self.models: dict[str, ModelMonitor] = {}
        #: Events of models that got no monitor: in all, and by reason.
        self.dropped_events = 0
        self.refused_events: dict[Refusal, int] = dict.fromkeys(Refusal, 0)
        #: Models evicted for newcomers since the caller last took them (``take_evicted``).
        self.evicted: list[str] = []
        #: Models whose discovery ended since the caller last took them (``take_covered``).
        self.covered: list[CoverageBuilt] = []
        #: Models of the last batch whose Readings or health may have changed.
        self.changed: list[str] = []
        #: Models the last ``tick`` evaluated (the others' evaluation would change nothing).
        self.ticked: list[str] = []
        #: Models evaluated (by a batch or the tick) since the caller last took them
        #: (``take_moved``): those whose levels, Readings or signals may have changed.
        self.moved: set[str] = set()
        #: Models of the last batch and how many of its events each one received.
        self.received: list[tuple[str, int]] = []
        #: Models of the batch being applied whose span is in their state so far (with
        #: banks: all of them before the first evaluates): a checkpoint taken mid-batch
        #: holds their records of the batch.
        self.applied_models: list[str] = []
        self._seed = seed
        self._refused: set[str] = set()

    @classmethod
    def for_settings(
        cls, settings: Settings, *, may_evict: Callable[[str], bool] | None = None
    ) -> Engine:
        """The engine the daemon runs (replay too): the policy's named models and the
        ``engine`` section's limits."""
        engine = settings.engine
        return cls(
            settings.policy_for,
            max_models=engine.max_models,
            named=settings.named_models(),
            admit_after_events=engine.admit_after_events,
            probation_window_s=engine.probation_window_s,
            evict_idle_s=engine.evict_idle_s,
            may_evict=may_evict,
            max_pending_outcomes=engine.max_pending_outcomes,
        )

    def monitor(self, model: str, now: float) -> ModelMonitor | None:
        """The monitor of ``model`` for one event: found, created, or None (refused)."""
        return self._admit({model: 1}, now).get(model)

    def _create(self, model: str, now: float) -> ModelMonitor:
        created = ModelMonitor.build(
            model, self.policy_for(model), now, seed=self._seed, banks=self.banks
        )
        created.defer = self.defer
        created.announce = self.covered
        self.models[model] = created
        return created

    def _evictable(self, model: str) -> bool:
        monitor = self.models.get(model)
        if monitor is None:
            return True
        # Never silently: a model in an incident, or timing a breach or a recovery, stays.
        if not monitor.idle:
            return False
        return self.may_evict is None or self.may_evict(model)

    def _last_seen(self, model: str) -> float | None:
        monitor = self.models.get(model)
        return None if monitor is None else monitor.last_event_at

    def _admit(self, counts: dict[str, int], now: float) -> dict[str, ModelMonitor]:
        """The monitors of one batch's models (``counts``: events per model, in order of
        first appearance); refused models are left out and their events counted."""
        admission = self.admission
        found: dict[str, ModelMonitor] = {}
        new: list[str] = []
        # Watched models first: their sightings in this batch count before any eviction.
        for model, n in counts.items():
            monitor = self.models.get(model)
            if monitor is None:
                new.append(model)
                continue
            found[model] = monitor
            monitor.last_event_at = now
            admission.seen(model, monitor.events + n)
        waiting = []
        for model in new:
            if admission.admit_free(model, counts[model]):
                found[model] = self._create(model, now)
            else:
                waiting.append(model)
        if waiting:
            passed = admission.on_probation(waiting, [counts[m] for m in waiting], now)

            def evictable(model: str) -> bool:
                # A model of this batch (maybe admitted a moment ago) is in use.
                return model not in counts and self._evictable(model)

            searching = True
            for model, ok in zip(waiting, passed, strict=True):
                victim = None
                if ok and searching:
                    victim = admission.victim(evictable, self._last_seen, now)
                    # No model may go now: none will for the rest of this batch either.
                    searching = victim is not None
                if victim is None:
                    self._refuse(
                        model, counts[model], Refusal.MODEL_LIMIT if ok else Refusal.PROBATION
                    )
                    continue
                # Logged per batch by the caller (a sustained flood may evict many).
                admission.replace(victim, model)
                self._release(self.models.pop(victim, None))
                self.moved.discard(victim)
                self.evicted.append(victim)
                log.debug("model %r evicted for %r (max_models=%d)", victim, model, self.max_models)
                found[model] = self._create(model, now)
        # Back in order of first appearance (busy models early).
        return {model: found[model] for model in counts if model in found}

    def _refuse(self, model: str, events: int, reason: Refusal) -> None:
        self.dropped_events += events
        self.refused_events[reason] += events
        if model not in self._refused and len(self._refused) < 1000:
            self._refused.add(model)
            log.warning(
                "model %r not watched (%s): max_models=%d unnamed models watched "
                "(name it in the policy or raise engine.max_models)",
                model,
                reason.value,
                self.max_models,
            )

    def adopt(self, model: str, monitor: ModelMonitor) -> bool:
        """Take a monitor restored from a checkpoint, if the admission rule has room."""
        if not self.admission.adopt(model):
            return False
        banks = self.banks
        if banks is not None and monitor.banks is not banks:
            # Restored per object (``restore_model``): each windowed detector moves into its
            # bank by way of its checkpoint bytes, which both kinds read and write alike.
            for signal in monitor.signals:
                for member in signal.members:
                    member.detector = banks.adopt(member.detector)
            monitor.banks = banks
            monitor.signals_changed()
        previous = self.models.get(model)
        if previous is not monitor:
            self._release(previous)
        monitor.defer = self.defer
        monitor.announce = self.covered
        self.models[model] = monitor
        return True

    def take_evicted(self) -> list[str]:
        evicted, self.evicted = self.evicted, []
        return evicted

    def take_covered(self) -> list[CoverageBuilt]:
        """The models whose signals were built since the last call (for the audit trail)."""
        covered = self.covered[:]
        self.covered.clear()  # the monitors hold this very list
        return covered

    def apply(self, events: Sequence[Event], now: float) -> list[Transition]:
        """Apply one batch; return the health transitions it caused, in model order."""
        return [t for found in self.apply_stepwise(events, now) for t in found]

    def apply_stepwise(
        self, events: Sequence[Event] | DecodedBatch, now: float, *, step: int = 64
    ) -> Iterator[list[Transition]]:
        """Apply one batch model by model, handing over each transition as soon as its model
        is done, so its flag write and page can start while the rest of the batch is applied
        (models come in order of first appearance: busy models early). Also hands over an
        empty list every ``step`` models: a point where the caller may let other work run.

        ``events``: the batch's events, or the batch decoded straight into columns
        (``monitor.engine.decode``): the same spans, the same values."""
        if isinstance(events, DecodedBatch):
            columns, spans = self._decoded_spans(events, now)
        else:
            columns, spans = self._event_spans(events, now)
        self._join_outcomes(columns, spans, now)
        self.received = [(monitor.model, end - start) for monitor, start, end in spans]
        changed = self.changed = []
        moved = self.moved
        # Every model decides what its detectors get; a bank member's values are recorded,
        # then fed in one pass per bank; then each model evaluates, in the batch's order.
        applied: Iterable[tuple[ModelMonitor, bool]]
        held = self.applied_models = []
        if self.banks is None:
            # Per object: each model is applied just before it is evaluated.
            applied = self._apply_each(spans, columns, now, held)
        else:
            with self._collecting():
                fed_spans = [m.apply_span(columns, start, end, now) for m, start, end in spans]
            self._feed_banks()
            held += [m.model for m, _start, _end in spans]
            applied = zip((m for m, _start, _end in spans), fed_spans, strict=True)
        for i, (monitor, fed) in enumerate(applied, 1):
            # Unchanged Readings and nothing held or timed: evaluating would change nothing.
            if not fed and monitor.idle:
                transition = None
            else:
                changed.append(monitor.model)
                moved.add(monitor.model)
                transition = monitor.evaluate(now)
            if transition is not None:
                yield [transition]
            elif i % step == 0:
                yield []
        # Every column a waiting span reads was built (its completeness was checked).
        columns.release_events()

    @staticmethod
    def _apply_each(
        spans: list[tuple[ModelMonitor, int, int]],
        columns: EventColumns,
        now: float,
        held: list[str],
    ) -> Iterator[tuple[ModelMonitor, bool]]:
        for monitor, start, end in spans:
            fed = monitor.apply_span(columns, start, end, now)
            held.append(monitor.model)
            yield monitor, fed

    def _event_spans(
        self, events: Sequence[Event], now: float
    ) -> tuple[EventColumns, list[tuple[ModelMonitor, int, int]]]:
        """The batch's columns and each admitted model's span of them."""
        by_model: dict[str, list[Event]] = {}
        for event in events:
            bucket = by_model.get(event.model)
            if bucket is None:
                by_model[event.model] = [event]
            else:
                bucket.append(event)
        monitors = self._admit({model: len(found) for model, found in by_model.items()}, now)
        # Events regrouped model after model: every column is then built once for the whole
        # batch, and each model's detectors read one contiguous slice of it.
        ordered: list[Event] = []
        spans: list[tuple[ModelMonitor, int, int]] = []
        for model, monitor in monitors.items():
            model_events = by_model[model]
            start = len(ordered)
            ordered += model_events
            spans.append((monitor, start, len(ordered)))
        return EventColumns(ordered), spans

    def _decoded_spans(
        self, batch: DecodedBatch, now: float
    ) -> tuple[EventColumns, list[tuple[ModelMonitor, int, int]]]:
        """As ``_event_spans`` for a batch decoded into columns: the rows regrouped model
        after model by one stable argsort of model codes (codes in order of first
        appearance, so the models come in that order and each model's rows in theirs),
        every column reordered by the same permutation (``take``). A model's code is its
        first row (``DecodedBatch.model_codes``): sorted, the codes keep that order."""
        first, codes = batch.model_codes()
        per_code = np.bincount(codes, minlength=len(codes))
        counts = dict(zip(first, per_code[list(first.values())].tolist(), strict=True))
        monitors = self._admit(counts, now)
        if len(monitors) == len(first):
            order = np.argsort(codes, kind="stable")
        else:  # the rows of refused models are left out, as their events are
            admitted = np.zeros(len(codes), dtype=bool)
            admitted[[first[model] for model in monitors]] = True
            kept = np.flatnonzero(admitted[codes])
            order = kept[np.argsort(codes[kept], kind="stable")]
        spans: list[tuple[ModelMonitor, int, int]] = []
        start = 0
        for model, monitor in monitors.items():
            end = start + counts[model]
            spans.append((monitor, start, end))
            start = end
        positions = order.tolist()
        rows = batch.rows
        columns = EventColumns(list(map(rows.__getitem__, positions)))
        for key, values in batch.columns.items():
            if isinstance(values, np.ndarray):
                columns.put(key, values.take(order, axis=0))
            else:
                columns.put(key, list(map(values.__getitem__, positions)))
        return columns, spans

    def _join_outcomes(
        self, columns: EventColumns, spans: list[tuple[ModelMonitor, int, int]], now: float
    ) -> None:
        """The outcome join of every model of the batch, before any column is built. A
        batch with no label at all (checked in C) costs only the models that keep
        predictions."""
        events = columns.events
        labelled = list(map(_LABEL, events)).count(None) != len(events)
        budget = self.outcome_budget
        for monitor, start, end in spans:
            if monitor.outcomes is not None or labelled:
                monitor.join_outcomes(columns, start, end, now, budget)

    def tick(self, now: float) -> list[Transition]:
        """Re-evaluate on the clock alone (recoveries, no-data) between batches; end the
        discoveries due, and feed the detectors the events that waited ``flush_after_s``
        (the others change no Reading by waiting longer: they go in with the span that
        reaches the next test, or at a later tick).

        Only the models whose evaluation may change something are evaluated
        (``ModelMonitor.clock_due``: fed just now, discovery ended, a breach held, a recovery
        timed, a no-data rule due); ``ticked`` names them, for the publisher and history.
        """
        transitions = []
        after_s = self.flush_after_s
        with self._collecting():
            for monitor in self.models.values():
                if monitor.discovering and monitor.discovery_due(now):
                    monitor.end_discovery(now)
                elif monitor.flush_due(now, after_s):
                    monitor.flush(now)
        self._feed_banks()
        ticked = self.ticked = []
        for monitor in self.models.values():
            if not monitor.clock_due(now):
                continue
            ticked.append(monitor.model)
            transition = monitor.evaluate(now)
            if transition is not None:
                transitions.append(transition)
        self.moved.update(ticked)
        return transitions

    def take_moved(self) -> set[str]:
        """The models evaluated since the last call (see ``moved``)."""
        moved, self.moved = self.moved, set()
        return moved

    @contextlib.contextmanager
    def _collecting(self) -> Iterator[None]:
        """Bank members' feeds are recorded for ``_feed_banks`` (none is lost on an error:
        they are fed then)."""
        banks = self.banks
        if banks is None:
            yield
            return
        banks.collecting = True
        try:
            yield
        finally:
            banks.collecting = False
            if sys.exc_info()[0] is not None:
                self._feed_banks()

    def _feed_banks(self) -> None:
        """Feed the bank members what the models recorded, then their ``until_test``."""
        if self.banks is None:
            return
        for monitor in self.banks.feed():
            if monitor.until_stale:
                monitor.until_test = monitor._until_test()

    def _release(self, monitor: ModelMonitor | None) -> None:
        """Free the bank rows of a monitor the engine no longer holds."""
        if monitor is None or self.banks is None or monitor.banks is not self.banks:
            return
        self.banks.release([m for signal in monitor.signals for m in signal.members])

    def drop(self, model: str) -> None:
        self._release(self.models.pop(model, None))
        self.moved.discard(model)
        self.admission.forget(model)

    def snapshot(self) -> dict[str, Any]:
        return {model: describe(m) for model, m in self.models.items()}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def describe_coverage(monitor: ModelMonitor) -> dict[str, Any]:
    """Where a model's signals come from: discovery's state and what it left unwatched."""
    policy = monitor.policy
    schema = monitor.schema
    if schema is None:
        return {"discovers": False, "state": "watching"}
    out: dict[str, Any] = {
        "discovers": True,
        "state": "discovering" if monitor.discovering else "watching",
        "events_observed": schema.events,
        "discover_events": policy.auto.discover_events,
        "discover_within_s": policy.auto.discover_within,
        "discovery_started_at": monitor.discovery_started_at,
        "max_features": policy.auto.max_features,
    }
    if monitor.notes is not None:
        out.update(monitor.notes.to_json())
    return out


def describe_signal(signal: SignalMonitor, covered: CoveredSignal | None) -> dict[str, Any]:
    """One signal of a model's /status JSON (``covered``: where it comes from, if known)."""
    members = {}
    for member in signal.members:
        r = member.reading
        members[member.name] = {
            "statistic": _finite(r.statistic),
            "effect": _finite(r.effect),
            "threshold": _finite(r.threshold),
            "verdict": r.verdict.value,
            "samples": r.samples,
        }
    policy = signal.policy
    return {
        "level": signal.level.label,
        "origin": covered.origin if covered is not None else "named",
        "reason": covered.reason if covered is not None else "named in the policy",
        "source": policy.source.value,
        "detector": policy.detector_spec.type,
        "thresholds": (
            {lvl.label: v for lvl, v in policy.thresholds.items()} if policy.thresholds else None
        ),
        "for_s": signal.for_s,
        "readings": members,
    }


def describe(monitor: ModelMonitor) -> dict[str, Any]:
    """The JSON shape of one model for /status."""
    origins = {c.name: c for c in monitor.coverage()}
    signals = {
        signal.name: describe_signal(signal, origins.get(signal.name)) for signal in monitor.signals
    }
    return {
        "state": monitor.health.level.label,
        "mode": monitor.policy.mode,
        "model_version": monitor.model_version,
        "events": monitor.events,
        "last_event_at": monitor.last_event_at,
        "coverage": describe_coverage(monitor),
        "signals": signals,
        **(
            {}
            if monitor.outcomes is None
            else {
                "outcomes": monitor.outcomes.describe(),
                "added_signals": [covered.to_json() for covered in monitor.added],
            }
        ),
    }
