"""The banked lane: a batch's bank feeds gathered column by column, not member by member.

A model whose detectors are bank members (``monitor.engine.banks``) gets, when it is fed, one
span of values per member: the same rows of each of its columns. Recording those feeds member
by member (``Banks.record``) and regrouping them per bank (``Banks.feed``) costs Python per
model and member. The lane takes a model's whole feed at once instead (:meth:`Banks.take_lane`
from ``ModelMonitor._feed``): its spans, and its :class:`LanePlan` (the bank members and the
column each reads, built once for the model's signals). When the batch's bank pass runs,
:func:`feed_lane` groups the models fed by plan shape (the models of one policy share it),
gathers each column's rows of all of them with numpy (one fancy index per batch the spans came
from, per column), and runs one ``update_flat`` per bank over every member of those models:
member numbers in a matrix (column x model), values laid out column after column, each model's
span lengths. It then sets each member's Reading and ``last_conclusive_at`` as
``Banks.feed`` does, and each model's ``until_test`` from the banks' counts at once
(``events_until_test_flat``), without asking member by member.

What does not change: which spans wait and when a model is fed (``ModelMonitor._apply``:
the deferral, hence the checkpoints' waiting values and ``conclusive_at``), the values each
member gets and in which order, the Readings (``update_flat``'s contract), the evaluation.
A model's per-object members (``psi``, River wrappers) are fed at once, as
``SignalMonitor.update_spans`` feeds them. The lane is not taken (the model's feed goes
member by member, as before) while the model discovers or keeps outcomes, when a signal has a
``no_data`` rule or is sparse (label sources), when a span misses a value, when the model
already has feeds recorded in the batch, or when it has no bank member.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from detectors.bank import BankMember
from detectors.base import Reading, Verdict
from monitor.engine.columns import Column, EventColumns

if TYPE_CHECKING:
    from detectors.bank import _WindowBank
    from monitor.engine.engine import Member, ModelMonitor, SignalMonitor, Span

__all__ = ["LaneFeed", "LanePlan", "feed_lane", "plan_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _BankPart:
    """A model's members of one bank, with the column each reads, in signal order."""

    bank: _WindowBank
    columns: tuple[Column, ...]
    members: tuple[Member, ...]
    numbers: np.ndarray


@dataclass(frozen=True, slots=True)
class LanePlan:
    """What the lane needs of one model, built for one list of its signals."""

    #: The list of signals it was built for (a model's signals list is replaced, or grows,
    #: when they change: the plan is then rebuilt).
    signals: list[SignalMonitor]
    count: int
    #: Same shape, same banks and columns in the same order: fed by the same calls.
    shape: tuple[Hashable, ...]
    parts: tuple[_BankPart, ...]
    #: Members that are no bank's: fed at once, one call each.
    others: tuple[Member, ...]

    def fits(self, signals: list[SignalMonitor]) -> bool:
        return self.signals is signals and self.count == len(signals)


def plan_for(monitor: ModelMonitor) -> LanePlan | None:
    """``monitor``'s plan, or None when its signals keep the member-by-member path (a
    ``no_data`` rule, a sparse signal, no bank member)."""
    by_bank: dict[int, tuple[_WindowBank, list[Column], list[Member], list[int]]] = {}
    others: list[Member] = []
    for signal in monitor.signals:
        if signal.policy.no_data is not None or signal.sparse:
            return None
        for member in signal.members:
            detector = member.detector
            if isinstance(detector, BankMember):
                if not detector.live:
                    return None
                found = by_bank.get(id(detector.bank))
                if found is None:
                    found = by_bank[id(detector.bank)] = (detector.bank, [], [], [])
                found[1].append(member.extract)
                found[2].append(member)
                found[3].append(detector.number)
            else:
                others.append(member)
    if not by_bank:
        return None
    parts = tuple(
        _BankPart(bank, tuple(columns), tuple(members), np.array(numbers, dtype=np.int64))
        for bank, columns, members, numbers in by_bank.values()
    )
    shape = tuple((id(part.bank), tuple(c.key for c in part.columns)) for part in parts)
    return LanePlan(monitor.signals, len(monitor.signals), shape, parts, tuple(others))


@dataclass(slots=True)
class LaneFeed:
    """One model's feed taken by the lane: its spans (in order) and their events."""

    monitor: ModelMonitor
    plan: LanePlan
    spans: list[Span]
    events: int
    #: The time it is fed as (its batch's, or a flush's: ``ModelMonitor.flush``): what its
    #: members' ``last_conclusive_at`` becomes, as a recorded feed's own time does.
    now: float


def feed_others(plan: LanePlan, spans: list[Span], now: float) -> None:
    """The plan's per-object members, fed their values of ``spans`` at once (as
    ``SignalMonitor.update_spans`` feeds a member no bank holds)."""
    inconclusive = Verdict.INCONCLUSIVE
    for member in plan.others:
        extract = member.extract
        if len(spans) == 1:
            cols, start, end = spans[0]
            values = cols.get(extract)[start:end]
        else:
            parts = [cols.get(extract)[start:end] for cols, start, end in spans]
            if isinstance(parts[0], np.ndarray):
                values = np.concatenate(parts)
            else:
                values = [value for part in parts for value in part]
        reading = member.detector.update_many(values)
        member.reading = reading
        if reading.verdict is not inconclusive:
            member.last_conclusive_at = now


def _as_values(found: Any) -> np.ndarray:
    """A column as the float64 vector a bank reads (``update_many`` converts the same way)."""
    if isinstance(found, np.ndarray) and found.ndim == 1 and found.dtype == np.float64:
        return found
    return np.asarray(found, dtype=np.float64).reshape(-1)


def feed_lane(feeds: list[LaneFeed], stale: set[int]) -> None:
    """Run the lane's feeds: per plan shape, one ``update_flat`` per bank. A model in
    ``stale`` (by id: it has feeds recorded after this one) keeps ``until_stale`` for the
    caller; every other model's ``until_test`` is set here."""
    by_shape: dict[tuple[Hashable, ...], list[LaneFeed]] = {}
    for feed in feeds:
        found = by_shape.get(feed.plan.shape)
        if found is None:
            by_shape[feed.plan.shape] = [feed]
        else:
            found.append(feed)
    for group in by_shape.values():
        _feed_shape(group, stale)


def _gathers(feeds: list[LaneFeed]) -> tuple[np.ndarray, list[tuple[EventColumns, Any, Any]]]:
    """Each model's length, and per batch the spans came from: where its rows are and where
    they go in the model-after-model layout (slices when they follow each other)."""
    lengths = np.fromiter((feed.events for feed in feeds), dtype=np.int64, count=len(feeds))
    by_source: dict[int, tuple[EventColumns, list[int], list[int], list[int]]] = {}
    offset = 0
    for feed in feeds:
        for cols, start, end in feed.spans:
            found = by_source.get(id(cols))
            if found is None:
                found = by_source[id(cols)] = (cols, [], [], [])
            found[1].append(start)
            found[2].append(end)
            found[3].append(offset)
            offset += end - start
    gathers: list[tuple[EventColumns, Any, Any]] = []
    for cols, starts, ends, dsts in by_source.values():
        if len(starts) == 1:
            gathers.append(
                (cols, slice(starts[0], ends[0]), slice(dsts[0], dsts[0] + ends[0] - starts[0]))
            )
            continue
        first = np.array(starts, dtype=np.int64)
        sizes = np.array(ends, dtype=np.int64) - first
        total = int(sizes.sum())
        # Position within its span of every row: 0..size-1, span after span.
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        src = np.repeat(first, sizes) + within
        dst = np.repeat(np.array(dsts, dtype=np.int64), sizes) + within
        gathers.append((cols, src, dst))
    return lengths, gathers


def _feed_shape(feeds: list[LaneFeed], stale: set[int]) -> None:
    lengths, gathers = _gathers(feeds)
    total = int(lengths.sum())
    n_models = len(feeds)
    inconclusive = Verdict.INCONCLUSIVE
    nows = [feed.now for feed in feeds]
    # Per model: the fewest events before a test (-1: some member cannot say).
    fewest = np.full(n_models, np.iinfo(np.int64).max, dtype=np.int64)
    unknown = np.zeros(n_models, dtype=bool)
    for p, part in enumerate(feeds[0].plan.parts):
        bank = part.bank
        n_columns = len(part.columns)
        values = np.empty((n_columns, total), dtype=np.float64)
        for i, column in enumerate(part.columns):
            row = values[i]
            for cols, src, dst in gathers:
                row[dst] = _as_values(cols.get(column))[src]
        # Members column after column, each column's models in order: member (i, j) is at
        # i * n_models + j, its values row i's span j.
        numbers = np.stack([feed.plan.parts[p].numbers for feed in feeds], axis=1).reshape(-1)
        changed, readings = bank.update_flat(
            numbers, values.reshape(-1), np.tile(lengths, n_columns)
        )
        got: list[Reading | None] = [None] * numbers.size
        for j, fresh in zip(changed.tolist(), readings, strict=True):
            got[j] = fresh
        members = [feed.plan.parts[p].members[i] for i in range(n_columns) for feed in feeds]
        for member, found, number, now in zip(
            members, got, numbers.tolist(), nows * n_columns, strict=True
        ):
            reading = bank.reading(number) if found is None else found
            member.reading = reading
            if reading.verdict is not inconclusive:
                member.last_conclusive_at = now
        until = bank.events_until_test_flat(numbers).reshape(n_columns, n_models)
        unknown |= (until < 0).any(axis=0)
        np.minimum(fewest, until.min(axis=0), out=fewest)
    for j, feed in enumerate(feeds):
        monitor = feed.monitor
        if id(monitor) in stale:
            continue  # fed again after this: ``Banks.feed`` hands it back stale
        monitor.until_stale = False
        if unknown[j] or not monitor.defer:
            monitor.until_test = None
            continue
        until_test: int | None = int(fewest[j])
        for member in feed.plan.others:
            other = member.detector.events_until_test()
            if other is None:
                until_test = None
                break
            until_test = min(other, until_test)  # type: ignore[type-var]
        monitor.until_test = until_test
