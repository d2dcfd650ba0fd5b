"""The engine's detector banks: one :mod:`detectors.bank` bank per windowed detector spec
(``ks_window``, ``rate_window``, ``missing_rate``, ``quantile``), whose members are the
detectors of every model watching a signal of that spec, and the values a batch feeds them.

During a batch each model decides what its detectors get (``ModelMonitor.apply_span``); what
goes to a bank member is only recorded here (:meth:`Banks.record`). Once every model has
decided, :meth:`Banks.feed` runs one ``update_flat`` per bank for all of them. A member fed
twice in one batch (waiting values flushed before a span with a missing value, discovery
ending inside a span) gets its feeds in rounds, in order: its Readings are those of the same
calls one by one. A model that needs its detectors' state before the batch is fed (when its
discovery ends, say) has its own recorded feeds run at once (:meth:`Banks.feed_now`).

A model's whole feed may instead be taken by the lane (:meth:`Banks.take_lane`,
``monitor.engine.lane``): gathered column by column for every such model of the batch and
fed first in :meth:`Banks.feed` (a model's feeds recorded after it go in the rounds after).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from detectors.bank import BankMember, KSWindowBank, MissingRateBank, QuantileBank, RateWindowBank
from detectors.base import Detector, DetectorSpecBase, Reading, Verdict
from detectors.missing import MissingRateSpec
from detectors.numeric import KSWindowSpec
from detectors.quantile import QuantileSpec
from detectors.rates import RateWindowSpec
from detectors.registry import build_detector
from monitor.engine.lane import LaneFeed, feed_lane, feed_others

if TYPE_CHECKING:
    from detectors.bank import _WindowBank
    from monitor.engine.engine import Member, ModelMonitor, Span

__all__ = ["Banks"]

log = logging.getLogger(__name__)

#: The spec types a bank holds (exactly these: a subclass may run another detector).
_BANK_OF: dict[type[DetectorSpecBase], Any] = {
    KSWindowSpec: KSWindowBank,
    RateWindowSpec: RateWindowBank,
    MissingRateSpec: MissingRateBank,
    QuantileSpec: QuantileBank,
}

#: One recorded feed: the member, its bank handle, its values in order (in parts: the
#: spans of one or more batches, joined once for the whole bank), and the time it is fed at
#: (a conclusive Reading's ``last_conclusive_at``: events that waited are fed at theirs).
_Feed = tuple["Member", BankMember, list[np.ndarray], float]


class Banks:
    """The banks of one engine, keyed by spec, and the feeds recorded for the batch."""

    def __init__(self, *, lane: bool = True) -> None:
        self._banks: dict[tuple[type[DetectorSpecBase], str], _WindowBank] = {}
        #: Per model with feeds recorded in this batch: its feeds, in the order recorded.
        self._pending: dict[int, tuple[ModelMonitor, list[_Feed]]] = {}
        #: Take whole model feeds column by column (``take_lane``); False: every feed member
        #: by member (the path before the lane, kept for the equivalence tests and the bench).
        self.lane = lane
        #: Per model whose feed the lane took in this batch: that feed.
        self._lane: dict[int, LaneFeed] = {}
        #: Events fed by the lane, and member by member while collecting (what the tests and
        #: the bench read to see which path ran).
        self.lane_events = 0
        self.member_events = 0
        #: Recording (inside the engine's batch or tick); otherwise every feed runs at once
        #: (a flush before a checkpoint, say).
        self.collecting = False

    def __len__(self) -> int:
        return len(self._banks)

    def _bank_for(self, spec: DetectorSpecBase) -> _WindowBank | None:
        bank_class = _BANK_OF.get(type(spec))
        if bank_class is None:
            return None
        key = (type(spec), spec.model_dump_json())
        bank = self._banks.get(key)
        if bank is None:
            bank = self._banks[key] = bank_class(spec)
        return bank

    def build(self, spec: DetectorSpecBase, *, family_size: int, seed: int) -> Detector:
        """A fresh detector of ``spec``: a bank member when a bank holds its type."""
        bank = self._bank_for(spec)
        if bank is None:
            return build_detector(spec, family_size=family_size, seed=seed)
        return bank.handle(bank.add(family_size=family_size, seed=seed))

    def adopt(self, detector: Detector) -> Detector:
        """``detector`` (restored from a checkpoint) as a bank member, by way of its state
        bytes, when a bank holds its type; else itself."""
        if isinstance(detector, BankMember):
            return detector
        spec = getattr(detector, "spec", None)
        bank = self._bank_for(spec) if isinstance(spec, DetectorSpecBase) else None
        if bank is None:
            return detector
        return bank.handle(bank.add_from_bytes(detector.to_bytes()))

    def release(self, members: list[Member]) -> None:
        """Free the bank rows of ``members`` (their model or signal is gone)."""
        for member in members:
            detector = member.detector
            if isinstance(detector, BankMember) and detector.live:
                detector.bank.remove(detector.number)

    # -- the batch ----------------------------------------------------------------------

    def record(self, monitor: ModelMonitor, member: Member, parts: list[Any], now: float) -> bool:
        """Keep ``parts`` (the member's values, in order) for ``member`` until :meth:`feed`;
        False when the member is not a bank's (the caller feeds it at once)."""
        detector = member.detector
        if (
            not self.collecting
            or not isinstance(detector, BankMember)
            or not all(isinstance(part, np.ndarray) and part.ndim == 1 for part in parts)
        ):
            return False
        found = self._pending.get(id(monitor))
        if found is None:
            found = self._pending[id(monitor)] = (monitor, [])
        found[1].append((member, detector, parts, now))
        return True

    def take_lane(self, monitor: ModelMonitor, spans: list[Span], now: float) -> bool:
        """Keep ``monitor``'s feed of ``spans`` (every signal's members) for the lane of
        :meth:`feed`, feeding its per-object members at once; False when the lane does not
        take it (the caller feeds member by member)."""
        if not self.collecting:
            return False
        events = sum(end - start for _cols, start, end in spans)
        key = id(monitor)
        plan = (
            None
            if not self.lane or monitor.discovering or monitor.outcomes is not None
            or key in self._pending or key in self._lane
            else monitor.lane_plan()
        )  # fmt: skip
        if plan is None or not all(
            cols.complete(monitor.column_set(), start, end) for cols, start, end in spans
        ):
            self.member_events += events
            return False
        if plan.others:
            feed_others(plan, spans, now)
        self._lane[key] = LaneFeed(monitor, plan, spans, events, now)
        self.lane_events += events
        return True

    def pending(self, monitor: ModelMonitor) -> bool:
        key = id(monitor)
        return key in self._pending or key in self._lane

    def feed_now(self, monitor: ModelMonitor) -> None:
        """Run ``monitor``'s feeds now: the lane's first, then those recorded, in order."""
        lane = self._lane.pop(id(monitor), None)
        if lane is not None:
            feed_lane([lane], {id(monitor)})
        found = self._pending.pop(id(monitor), None)
        if found is None:
            return
        inconclusive = Verdict.INCONCLUSIVE
        for member, detector, parts, now in found[1]:
            reading = detector.update_many(parts[0] if len(parts) == 1 else np.concatenate(parts))
            member.reading = reading
            if reading.verdict is not inconclusive:
                member.last_conclusive_at = now

    def feed(self) -> list[ModelMonitor]:
        """Run the lane's feeds, then every recorded feed: per round, one ``update_flat`` per
        bank. Returns the models fed (those whose ``until_stale`` is left set need their
        ``until_test`` again)."""
        lane, self._lane = self._lane, {}
        fed: list[ModelMonitor] = []
        if lane:
            feed_lane(list(lane.values()), set(self._pending))
            fed = [feed.monitor for feed in lane.values()]
        pending, self._pending = self._pending, {}
        if not pending:
            return fed
        # Per round, per bank: the feeds. A member's n-th feed of the batch is in round n.
        rounds: list[dict[int, tuple[Any, list[_Feed]]]] = [{}]
        fed_times: dict[int, int] = {}
        for _monitor, feeds in pending.values():
            for feed in feeds:
                handle = feed[1]
                key = id(feed[0])
                n = fed_times.get(key, 0)
                fed_times[key] = n + 1
                if n == len(rounds):
                    rounds.append({})
                by_bank = rounds[n]
                bank = handle.bank
                entry = by_bank.get(id(bank))
                if entry is None:
                    entry = by_bank[id(bank)] = (bank, [])
                entry[1].append(feed)
        inconclusive = Verdict.INCONCLUSIVE
        for by_bank in rounds:
            for bank, feeds in by_bank.values():
                numbers = np.fromiter((f[1].number for f in feeds), np.int64, len(feeds))
                lengths = np.fromiter(
                    (sum(part.size for part in f[2]) for f in feeds), np.int64, len(feeds)
                )
                values = np.concatenate([part for f in feeds for part in f[2]])
                changed, readings = bank.update_flat(numbers, values, lengths)
                got: list[Reading | None] = [None] * len(feeds)
                for j, reading in zip(changed.tolist(), readings, strict=True):
                    got[j] = reading
                for (member, handle, _values, now), reading in zip(feeds, got, strict=True):
                    if reading is None:
                        reading = bank.reading(handle.number)
                    member.reading = reading
                    if reading.verdict is not inconclusive:
                        member.last_conclusive_at = now
        return fed + [monitor for monitor, _feeds in pending.values()]
