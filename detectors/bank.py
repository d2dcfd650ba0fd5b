"""Detector banks: the steady state of many ``ks_window`` (or ``rate_window``, ``missing_rate``,
``quantile``) detectors of one spec kept as arrays, so that a handful of numpy calls per batch
tests every member that is due.

A member starts as an ordinary detector (:class:`~detectors.numeric.KSWindowDetector`, or the
``rate_window`` class its spec picks): the reference and the window fill through the per-object
code, which owns the fence, the grid, the bootstrap and every first-time path. Once its fixed
reference is released (or it has none: an absolute threshold) and its window is full, only the
steady-state loop is left (admit, slide, rank or count, test every ``stride``), and the member
moves into the bank's rows by way of its checkpoint state. From then on a batch of many members
costs one pass of array operations per stride crossed, whatever the number of members. Members
with a rolling reference stay per object (their reference statistics are recomputed as it
refreshes).

Equivalence: for the same values in the same order, a member's Readings equal its per-object
twin's bit for bit, and :meth:`KSWindowBank.to_bytes` writes the same bytes as the twin's
``to_bytes`` (so checkpoints are interchangeable both ways). The operations are the same IEEE
operations on the same operands: row sums reduce each contiguous row as a 1-D sum does
(pairwise), the dot product of each row goes through the same BLAS ``ddot`` by way of stacked
``matmul``, ranks are exact counts (binary lifting over each member's grid, first over a
cached summary of it, then inside one segment), and the KS distance is a maximum, which no
order changes, of the detector's own differences (the same divisions of the same sorted
integer ranks, subtracted from the same ECDF steps).

Checkpoints: a member is saved as the very state dict ``BaseDetector.to_bytes`` packs
(``window`` ring buffer in storage order with its ``pos``, the released ``reference``, ``seen``,
the persistence ``since``, ``extra`` = grid, reference size, mean / std / tau / factor,
``fence``, ``extremes``, the last Reading), rebuilt from its row; a checkpoint of either kind
restores into a bank (:meth:`KSWindowBank.add_from_bytes`) or into a detector
(``detectors.restore_detector``). Ranks are not saved (a detector does not save them
either): they are a function of the window and the grid, recomputed on load.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import ValidationError

from detectors.base import INCONCLUSIVE, STATE_VERSION, Reading, Verdict
from detectors.calibration import chi2_critical, g_statistic_2x2, test_alpha
from detectors.extremes import MAGNITUDE_LIMIT
from detectors.missing import MissingRateDetector, MissingRateSpec
from detectors.numeric import KSWindowDetector, KSWindowSpec
from detectors.quantile import QuantileDetector, QuantileSpec
from detectors.rates import (
    RateWindowDetector,
    RateWindowSpec,
    ThresholdRateSpec,
    WindowRateDetector,
)
from detectors.serialization import StateError, pack, unpack
from detectors.window import WindowSpec

__all__ = [
    "BankMember",
    "KSWindowBank",
    "MissingRateBank",
    "QuantileBank",
    "RateWindowBank",
    "g_statistics_2x2",
]

log = logging.getLogger(__name__)

_NO_SINCE = -1
#: Values ranked per block: the scratch of one block (a few arrays of it) stays in cache.
_RANK_BLOCK = 8192
#: Grid points per segment of the two-level rank search: a row's summary (its every 32nd
#: point) is 32 values for a grid of 1,024, 3 MB for 12,000 rows, and stays in cache; a
#: segment is 256 bytes, four cache lines (measured: 16 as fast, 64 slower).
_SEGMENT = 32
#: Most ranks a row may hold for numpy's int16 "quicksort" to be x86-simd-sort's sorting
#: network (numpy 2, on CPUs with AVX-512 ICL): 0.3 against 3.9 us per row of 500 ranks for
#: the radix sort ("stable"). Past 512 values a row, or without the network, it is an introsort,
#: slower than the radix sort (8.7 against 8.4 us at 1,000; 28 against 4.5 at 500). Tried and
#: not kept for windows of 513 to 1,024: each half sorted by the network, the two runs merged by
#: timsort (int32 "stable"): 1.9 against 2.8 us a row alone, but 13.8 against 11.6 us a test
#: inside the distances (one more 128 KB scratch per block, the int32 copy).
_NETWORK = 512


@functools.lru_cache(maxsize=1)
def _sort_network() -> bool:
    """Whether numpy's int16 "quicksort" is the sorting network here: on 64 rows of 512 ranks
    it is about 8 times faster than the radix sort, an introsort several times slower; the
    fastest of 8 single runs of each (this thread's CPU time) tells them apart under any
    load. Once per process, about a millisecond."""
    sample = np.random.default_rng(0).integers(0, 1025, size=(64, _NETWORK)).astype(np.int16)
    scratch = np.empty_like(sample)
    best = {"stable": math.inf, "quicksort": math.inf}
    for trial in range(9):
        for kind in best:
            np.copyto(scratch, sample)
            start = time.thread_time()
            scratch.sort(axis=1, kind=kind)  # type: ignore[arg-type]
            spent = time.thread_time() - start
            if trial:  # the first round warms the caches
                best[kind] = min(spent, best[kind])
    found = best["quicksort"] * 3.0 < best["stable"]
    log.debug("int16 sort network: %s (%s)", found, best)
    return found


def _rank_sort_kind(width: int) -> str:
    """How rows of ``width`` ranks are sorted: integers sort to one order whatever the
    algorithm, so the choice changes the time only."""
    return "quicksort" if width <= _NETWORK and _sort_network() else "stable"


#: Rows a rate test computes one at a time: the block's ~30 numpy calls cost 50 us, a row
#: 10 us (measured; the values are the same bits either way).
_SCALAR_G_ROWS = 4


@dataclass(slots=True)
class _Member:
    """One member: a per-object detector while it fills, a bank row once steady."""

    detector: KSWindowDetector | None
    row: int
    seed: int
    family_size: int
    last: Reading
    #: The released reference's checkpoint state (constant once released).
    reference: dict[str, Any] | None = None
    number: int = -1
    #: Removed from its bank (``remove``): its number may now be another member's.
    removed: bool = False


def _restore(data: bytes, spec_class: type[WindowSpec], build: Any) -> Any:
    """A detector from its checkpoint (``registry.restore_detector``'s steps: the detector
    modules do not import the registry)."""
    raw = unpack(data)
    name = spec_class.model_fields["type"].default
    if raw.get("v") != STATE_VERSION:
        raise StateError(f"detector state version {raw.get('v')!r}, expected {STATE_VERSION}")
    try:
        spec = spec_class.model_validate(raw["spec"])
    except (ValidationError, KeyError) as err:
        raise StateError(f"not a {name} detector's checkpoint: {err}") from err
    try:
        detector = build(spec, family_size=int(raw["family_size"]), seed=int(raw["seed"]))
        detector._load(raw["state"])
        detector._load_last(raw["last"])
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, StateError):
            raise
        raise StateError(f"corrupt {name} checkpoint: {err!r}") from err
    return detector


_READING_FIELDS = ("statistic", "effect", "verdict", "samples", "threshold")
#: Each field's slot setter: a Reading is a frozen slotted dataclass whose ``__init__`` only
#: stores its five fields (no ``__post_init__``), so a bank builds the Readings of a round
#: field by field, one C-level ``map`` per field (0.7 against 1.5 us a Reading). Should the
#: class change shape, the bank calls its constructor instead.
_READING_SETTERS = (
    tuple(getattr(Reading, name).__set__ for name in _READING_FIELDS)
    if tuple(f.name for f in dataclasses.fields(Reading)) == _READING_FIELDS
    and "__slots__" in vars(Reading)
    and not hasattr(Reading, "__post_init__")
    else None
)


def _readings(
    statistics: list[float],
    effects: list[float],
    verdicts: list[Verdict],
    samples: int,
    thresholds: list[float],
) -> list[Reading]:
    """``Reading(statistics[i], effects[i], verdicts[i], samples, thresholds[i])`` for each i."""
    n = len(statistics)
    if _READING_SETTERS is None:
        return list(map(Reading, statistics, effects, verdicts, itertools.repeat(samples, n),
                        thresholds))  # fmt: skip
    made: list[Reading] = list(map(object.__new__, itertools.repeat(Reading, n)))
    columns: tuple[Iterable[Any], ...] = (
        statistics,
        effects,
        verdicts,
        itertools.repeat(samples, n),
        thresholds,
    )
    for setter, values in zip(_READING_SETTERS, columns, strict=True):
        collections.deque(map(setter, made, values), maxlen=0)
    return made


class _WindowBank:
    """The machinery every bank shares: members, rows, rounds of strides, checkpoints.

    A subclass says which detector it banks (``_spec_class``, ``_build``), which arrays its rows
    hold besides the window (``_alloc_extra``), when a steady member may join (``_accepts``),
    how a row loads from and saves to the checkpoint state, how values are prepared and
    admitted, what a write into the window updates (``_on_write``) and what a test does.
    """

    _spec_class: ClassVar[type[WindowSpec]]
    #: Values are measurements, clipped to the reference's fence (detectors.extremes).
    _fenced: ClassVar[bool] = False
    #: Arrays of one row per member, grown together; with the value new rows are filled with.
    _row_arrays: ClassVar[dict[str, float]] = {}

    def __init__(self, spec: WindowSpec, *, capacity: int = 64) -> None:
        if not isinstance(spec, self._spec_class):
            raise ValueError(
                f"a {type(self).__name__} holds "
                f"{self._spec_class.model_fields['type'].default} detectors, "
                f"not {type(spec).__name__}"
            )
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.spec = spec
        self._window = spec.window
        self._stride = spec.stride
        self._spec_json = spec.model_dump(mode="json")
        self._members: list[_Member] = []
        #: Numbers of removed members, reused by the next ``add``.
        self._free_numbers: list[int] = []
        #: Per member: its row, or -1 while it is a per-object detector.
        self._row_of = np.full(16, -1, dtype=np.int64)
        self._free: list[int] = []
        self._rows = 0
        self._capacity = capacity
        self._init_extra()
        self._win = np.zeros((capacity, spec.window))
        self._pos = np.zeros(capacity, dtype=np.int64)
        self._seen = np.zeros(capacity, dtype=np.int64)
        self._since = np.full(capacity, _NO_SINCE, dtype=np.int64)
        # The extreme-value rule's fence and counts (numeric detectors: ``_fenced``).
        self._lo = np.zeros(capacity)
        self._hi = np.zeros(capacity)
        self._infinite = np.zeros(capacity, dtype=np.int64)
        self._clipped = np.zeros(capacity, dtype=np.int64)
        self._alloc_extra(capacity)

    # -- hooks ------------------------------------------------------------------------------

    def _build(self, spec: Any, *, family_size: int, seed: int) -> Any:
        raise NotImplementedError

    def _init_extra(self) -> None:
        return None

    def _alloc_extra(self, capacity: int) -> None:
        # One value per row, of the fill's kind (an int fill: an int64 row array); a bank
        # whose rows hold more (KSWindowBank's ranks and grid) allocates its own.
        for name, fill in self._row_arrays.items():
            kind = np.int64 if isinstance(fill, int) else np.float64
            setattr(self, name, np.full(capacity, fill, dtype=kind))

    def _accepts(self, state: dict[str, Any]) -> bool:
        return True

    def _load_extra(self, row: int, member: _Member, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _save_extra(self, row: int) -> Any:
        """The row's ``extra`` checkpoint entry."""
        raise NotImplementedError

    def _prepare(self, flat: np.ndarray) -> np.ndarray:
        """NaN-free values as the detector's ``_prepare`` leaves them."""
        return flat

    def _admit(self, arows: np.ndarray, seg: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Fence.admit of each member's chunk: clipped to its fence, clipped values counted."""
        if not self._fenced:
            return values
        lo = self._lo[arows][seg]
        hi = self._hi[arows][seg]
        outside = (values < lo) | (values > hi)
        if not outside.any():
            return values
        n = arows.size
        # Fence.admit clips a whole chunk once any of its values lies outside.
        hit = np.bincount(seg[outside], minlength=n) > 0
        bounded = (self._hi[arows] < MAGNITUDE_LIMIT) | (self._lo[arows] > -MAGNITUDE_LIMIT)
        # Already at the magnitude limit: clamped, and counted, before the fence existed.
        counted = outside & ~(bounded[seg] & (np.abs(values) == MAGNITUDE_LIMIT))
        self._clipped[arows] += np.bincount(seg[counted], minlength=n)
        self._infinite[arows] += np.bincount(seg[np.isinf(values)], minlength=n)
        clipped: np.ndarray = np.where(hit[seg], np.clip(values, lo, hi), values)
        return clipped

    def _on_write(
        self,
        arows: np.ndarray,
        seg: np.ndarray,
        value_rows: np.ndarray,
        slots: np.ndarray,
        values: np.ndarray,
    ) -> None:
        """``values`` (of rows ``value_rows = arows[seg]``) are about to replace the window
        values at flat ``slots``."""

    def _test(self, rows: np.ndarray) -> list[Reading]:
        raise NotImplementedError

    def _conclude(
        self,
        rows: np.ndarray,
        statistic: np.ndarray,
        effect: np.ndarray,
        threshold: np.ndarray,
        candidate: np.ndarray,
        breach: Verdict,
    ) -> list[Reading]:
        """WindowedDetector._evaluate after ``_test``: the persistence gate, the Readings."""
        conclusive = ~np.isnan(statistic)
        candidate = candidate & conclusive
        seen = self._seen[rows]
        since = self._since[rows]
        since = np.where(candidate, np.where(since == _NO_SINCE, seen, since), _NO_SINCE)
        self._since[rows] = since
        fired = candidate & (seen - since >= self.spec.persist)
        # Per row 0 (ok), 1 (the breach) or 2 (inconclusive): a fired row is conclusive.
        codes = fired.view(np.int8) + (~conclusive).view(np.int8) * np.int8(2)
        verdicts = list(map((Verdict.OK, breach, Verdict.INCONCLUSIVE).__getitem__, codes.tolist()))
        return _readings(
            statistic.tolist(), effect.tolist(), verdicts, self._window, threshold.tolist()
        )

    # -- storage ----------------------------------------------------------------------------

    def _grow(self) -> None:
        old = self._capacity
        # A quarter more, not twice: rows are tens of KB each (window, grid, ranks), and the
        # bank of a large fleet holds thousands, so doubling left up to half of it unused
        # (12,000 ks_window members in 16,384 rows at 1,000 models).
        new = old + max(64, old // 4)
        fills = {
            "_win": 0.0, "_pos": 0, "_seen": 0, "_since": _NO_SINCE, "_lo": 0.0, "_hi": 0.0,
            "_infinite": 0, "_clipped": 0, **self._row_arrays,
        }  # fmt: skip
        for name, fill in fills.items():
            arr = getattr(self, name)
            grown = np.full((new, *arr.shape[1:]), fill, dtype=arr.dtype)
            grown[:old] = arr
            setattr(self, name, grown)
        self._capacity = new

    def _take_row(self) -> int:
        if self._free:
            return self._free.pop()
        if self._rows == self._capacity:
            self._grow()
        self._rows += 1
        return self._rows - 1

    # -- members ----------------------------------------------------------------------------

    def __len__(self) -> int:
        """Members held (removed ones not counted)."""
        return len(self._members) - len(self._free_numbers)

    def add(self, *, family_size: int = 1, seed: int = 0) -> int:
        """A new member (a fresh detector of the bank's spec); returns its number."""
        detector = self._build(self.spec, family_size=family_size, seed=seed)
        return self._append(_Member(detector, -1, seed, family_size, INCONCLUSIVE))

    def _append(self, member: _Member) -> int:
        if self._free_numbers:
            number = self._free_numbers.pop()
            self._members[number] = member
            member.number = number
            return number
        number = len(self._members)
        if number == self._row_of.size:
            self._row_of = np.concatenate([self._row_of, np.full(number, -1, dtype=np.int64)])
        self._members.append(member)
        member.number = number
        return number

    def add_from_bytes(self, data: bytes) -> int:
        """A new member restored from a detector's (or this bank's) checkpoint."""
        detector = _restore(data, self._spec_class, self._build)
        if detector.spec != self.spec:
            raise StateError(
                f"checkpoint holds a {type(detector).__name__} of spec {detector.spec!r}, "
                f"not this bank's {self.spec!r}"
            )
        member = _Member(detector, -1, detector.seed, detector.family_size, detector.reading())
        number = self._append(member)
        self._settle(member)
        return number

    def handle(self, member: int) -> BankMember:
        """``member`` behind the detector protocol, for code that holds one detector per
        member (checkpoints, the deferral of values between tests)."""
        self._member(member)
        return BankMember(self, member)

    def banked(self, member: int) -> bool:
        """Whether ``member`` is steady and held in the bank's rows."""
        return self._member(member).detector is None

    def reading(self, member: int) -> Reading:
        return self._member(member).last

    def events_until_test(self, member: int) -> int | None:
        m = self._member(member)
        if m.detector is not None:
            return m.detector.events_until_test()
        return self._stride - int(self._seen[m.row]) % self._stride

    def events_until_test_flat(self, members: np.ndarray) -> np.ndarray:
        """:meth:`events_until_test` of each of ``members`` at once, -1 for None."""
        rows = self._row_of[members]
        stride = self._stride
        until: np.ndarray = stride - self._seen[rows] % stride
        for j in np.flatnonzero(rows < 0).tolist():
            found = self.events_until_test(int(members[j]))
            until[j] = -1 if found is None else found
        return until

    def reset(self, member: int) -> None:
        """Back to a fresh detector; the member's row is freed."""
        m = self._member(member)
        if m.detector is None:
            self._free.append(m.row)
            self._since[m.row] = _NO_SINCE
        m.detector = self._build(self.spec, family_size=m.family_size, seed=m.seed)
        m.row = -1
        self._row_of[member] = -1
        m.last = INCONCLUSIVE
        m.reference = None

    def remove(self, member: int) -> None:
        """Forget ``member`` (its model was dropped): its row and its number are freed for
        the members added next; a handle to it fails from now on."""
        m = self._member(member)
        if m.detector is None:
            self._free.append(m.row)
            self._since[m.row] = _NO_SINCE
        m.detector = None
        m.row = -1
        m.reference = None
        m.removed = True
        self._row_of[member] = -1
        self._free_numbers.append(member)

    def _member(self, member: int) -> _Member:
        if not 0 <= member < len(self._members) or self._members[member].removed:
            raise IndexError(f"no member {member} in a bank of {len(self)}")
        return self._members[member]

    def _settle(self, member: _Member) -> None:
        """Move a per-object member into a row once only the steady-state loop is left."""
        detector = member.detector
        if detector is None:
            return
        if detector.spec.reference.mode != "fixed" and not detector.absolute_limit:
            # A rolling reference refreshes its statistics: that path stays per object.
            return
        # Cheap checks first: this runs after every update of a filling member.
        if detector.events_until_test() is None or detector._window.count < self._window:
            return
        raw = unpack(detector.to_bytes())
        state = raw["state"]
        if state["window"]["count"] != self._window or not state["reference"]["ready"]:
            return
        if not self._accepts(state):
            return
        row = self._take_row()
        self._load_row(row, member, raw)
        member.detector = None
        member.row = row
        self._row_of[member.number] = row

    def _load_row(self, row: int, member: _Member, raw: dict[str, Any]) -> None:
        state = raw["state"]
        window = state["window"]
        self._win[row] = window["buf"]
        self._pos[row] = int(window["pos"])
        self._seen[row] = int(state["seen"])
        since = state["since"]
        self._since[row] = _NO_SINCE if since is None else int(since)
        member.reference = state["reference"]
        if self._fenced:
            self._lo[row], self._hi[row] = (float(v) for v in state["fence"])
        self._infinite[row], self._clipped[row] = (int(v) for v in state["extremes"])
        self._load_extra(row, member, state)

    # -- checkpoints ------------------------------------------------------------------------

    def to_bytes(self, member: int) -> bytes:
        """The member's checkpoint: the bytes its per-object twin's ``to_bytes`` writes."""
        m = self._member(member)
        if m.detector is not None:
            return m.detector.to_bytes()
        row = m.row
        since = int(self._since[row])
        last = m.last
        extra = self._save_extra(row)
        fence = [float(self._lo[row]), float(self._hi[row])] if self._fenced else None
        extremes = [int(self._infinite[row]), int(self._clipped[row])]
        return pack(
            {
                "v": STATE_VERSION,
                "spec": self._spec_json,
                "family_size": m.family_size,
                "seed": m.seed,
                "last": [
                    last.statistic,
                    last.effect,
                    last.verdict.value,
                    last.samples,
                    last.threshold,
                ],
                "state": {
                    "window": {
                        "buf": self._win[row],
                        "pos": int(self._pos[row]),
                        "count": self._window,
                    },
                    "reference": m.reference,
                    "seen": int(self._seen[row]),
                    "since": None if since == _NO_SINCE else since,
                    "extra": extra,
                    "fence": fence,
                    "extremes": extremes,
                },
            }
        )

    def detector(self, member: int) -> Any:
        """The member as a per-object detector (a copy, by way of its checkpoint)."""
        return _restore(self.to_bytes(member), self._spec_class, self._build)

    # -- the batch --------------------------------------------------------------------------

    def update_many(self, members: Sequence[int], batches: Sequence[Any]) -> list[Reading]:
        """Feed ``batches[j]`` to ``members[j]``; each member's Reading, as its detector's."""
        if len(members) != len(batches):
            raise ValueError(
                f"update_many needs one batch per member: {len(members)} members, "
                f"{len(batches)} batches"
            )
        arrays = [np.asarray(batch, dtype=np.float64).ravel() for batch in batches]
        lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
        values = np.concatenate(arrays) if arrays else np.zeros(0)
        numbers = np.asarray(members, dtype=np.int64).reshape(-1)
        changed, readings = self.update_flat(numbers, values, lengths)
        results = [self._members[number].last for number in numbers.tolist()]
        for j, reading in zip(changed.tolist(), readings, strict=True):
            results[j] = reading
        return results

    def update_flat(
        self, members: np.ndarray, values: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, list[Reading]]:
        """Feed ``members[j]`` its ``lengths[j]`` values, which follow each other in ``values``
        (a column of a batch grouped member after member: no array per member is built).

        Returns the positions ``j`` whose Reading may have changed and, for each, the Reading
        its detector's ``update_many`` would have returned; every other member's Reading
        stands (``reading(member)``, the same object).
        """
        members = np.asarray(members)
        lengths = np.asarray(lengths)
        if members.ndim != 1 or lengths.shape != members.shape:
            raise ValueError(
                f"update_flat needs one length per member: members of shape {members.shape}, "
                f"lengths of shape {lengths.shape}"
            )
        if members.dtype.kind not in "iu" or lengths.dtype.kind not in "iu":
            raise ValueError(
                f"members and lengths must be integers, not {members.dtype} and {lengths.dtype}"
            )
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        k = members.size
        if k and (int(lengths.min()) < 0 or int(lengths.sum()) != values.size):
            raise ValueError(
                f"lengths must be non-negative and add up to the {values.size} values, "
                f"got a sum of {int(lengths.sum())} (smallest {int(lengths.min())})"
            )
        if k == 0:
            return np.zeros(0, dtype=np.int64), []
        size = len(self._members)
        low, high = int(members.min()), int(members.max())
        if low < 0 or high >= size:
            raise IndexError(f"no member {low if low < 0 else high} in a bank of {size}")
        if np.bincount(members, minlength=size).max() > 1:
            raise ValueError("update_flat takes each member at most once per call")
        rows = self._row_of[members]
        banked = rows >= 0
        positions: list[int] = []
        readings: list[Reading] = []
        if not banked.all():
            offsets = np.concatenate(([0], np.cumsum(lengths)))
            for j in np.flatnonzero(~banked).tolist():
                m = self._member(int(members[j]))
                assert m.detector is not None
                positions.append(j)
                readings.append(m.detector.update_many(values[offsets[j] : offsets[j + 1]]))
                # The Reading that stands is the last test's, not a breach returned from
                # earlier in the batch.
                m.last = m.detector.reading()
                self._settle(m)
            steady = np.flatnonzero(banked)
            values = values[np.repeat(banked, lengths)]
            lengths = lengths[steady]
            rows = rows[steady]
        else:
            steady = None
        if rows.size:
            at, changed = self._steady(rows, members if steady is None else members[steady],
                                       values, lengths.astype(np.int64))  # fmt: skip
            positions.extend((at if steady is None else steady[at]).tolist())
            readings.extend(changed)
        return np.asarray(positions, dtype=np.int64), readings

    def _steady(
        self, rows: np.ndarray, members: np.ndarray, flat: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, list[Reading]]:
        k = rows.size
        if flat.size and math.isnan(np.minimum.reduce(flat)):
            # NaN is missing (rule 1): dropped, per member.
            kept = ~np.isnan(flat)
            lengths = np.bincount(np.repeat(np.arange(k), lengths)[kept], minlength=k)
            flat = flat[kept]
        flat = self._prepare(flat)
        # Positions that got no value, then those tested, round after round, with their
        # Readings: a position is in at most one part unless it tested in several rounds.
        empty = np.flatnonzero(lengths == 0)
        parts = [empty] if empty.size else []
        found: list[list[Reading]] = []
        if empty.size:
            owners = [self._members[number] for number in members[empty].tolist()]
            found.append([
                Reading(math.nan, math.nan, Verdict.INCONCLUSIVE, self._window, m.last.threshold)
                for m in owners
            ])  # fmt: skip
        offset = np.zeros(k, dtype=np.int64)
        np.cumsum(lengths[:-1], out=offset[1:])
        remaining = lengths.copy()
        stride = self._stride
        w = self._window
        while True:
            active = np.flatnonzero(remaining > 0)
            if active.size == 0:
                break
            arows = rows[active]
            take = np.minimum(remaining[active], stride - self._seen[arows] % stride)
            # Ring.extend of a whole window rewrites the buffer from slot 0.
            whole = take >= w
            if whole.any():
                self._pos[arows[whole]] = 0
            total = int(take.sum())
            seg = np.repeat(np.arange(active.size), take)
            starts = np.zeros(active.size, dtype=np.int64)
            np.cumsum(take[:-1], out=starts[1:])
            # Value i of the round is value i - starts[m] of its member m's chunk: the
            # per-member parts of each index are summed before they are spread per value.
            index = np.arange(total)
            values = flat[(offset[active] - starts)[seg] + index]
            values = self._admit(arows, seg, values)
            value_rows = arows[seg]
            # Slot (pos + local) % w of the row, without a division: pos < w and the
            # chunk (at most a stride) is no longer than the window, so it wraps once at
            # most, where local reaches w - pos.
            pos = self._pos[arows]
            slots = (arows * w + pos - starts)[seg] + index
            slots -= (index >= (w - pos + starts)[seg]) * w
            self._on_write(arows, seg, value_rows, slots, values)
            self._win.reshape(-1)[slots] = values
            self._pos[arows] = (self._pos[arows] + take) % w
            self._seen[arows] += take
            offset[active] += take
            remaining[active] -= take
            due = np.flatnonzero(self._seen[arows] % stride == 0)
            if due.size:
                tested = active[due]
                parts.append(tested)
                found.append(self._test(rows[tested]))
        if not parts:
            return np.zeros(0, dtype=np.int64), []
        if len(parts) == 1:
            at, last = parts[0], found[0]
            out = last
        else:
            at, last, out = self._resolve(parts, found)
        owner = self._members
        for number, reading in zip(members[at].tolist(), last, strict=True):
            owner[number].last = reading
        return at, out

    @staticmethod
    def _resolve(
        parts: list[np.ndarray], found: list[list[Reading]]
    ) -> tuple[np.ndarray, list[Reading], list[Reading]]:
        """Positions that may appear in more than one part: each once, in the order of its
        first appearance, with its last Reading and the one the batch reports (its last
        breach, as update_many does, or else its last Reading)."""
        results: dict[int, Reading] = {}
        breached: dict[int, Reading] = {}
        for part, readings in zip(parts, found, strict=True):
            for i, reading in zip(part.tolist(), readings, strict=True):
                results[i] = reading
                if reading.breached:
                    breached[i] = reading
        at = np.fromiter(results, dtype=np.int64, count=len(results))
        last = list(results.values())
        return at, last, [breached.get(i, reading) for i, reading in results.items()]


class KSWindowBank(_WindowBank):
    """``ks_window`` detectors of one spec, steady members held as rows of arrays.

    Members are numbered from 0 in the order they are added; :meth:`update_many` takes, for
    any subset of them, one batch of values each and returns each one's Reading, exactly as
    ``detector.update_many`` would have.

    Examples
    --------
    >>> spec = KSWindowSpec(window=200, min_samples=100, stride=50, reference={"size": 500})
    >>> bank = KSWindowBank(spec)
    >>> a, b = bank.add(seed=1), bank.add(seed=2)
    >>> rng = np.random.default_rng(0)
    >>> readings = bank.update_many([a, b], [rng.normal(size=1000), rng.normal(size=1000)])
    >>> [r.verdict.value for r in readings], bank.banked(a)
    (['ok', 'ok'], True)
    >>> bank.update_many([b], [rng.normal(3.0, 1.0, size=300)])[0].verdict.value
    'drift'
    """

    _spec_class = KSWindowSpec
    _row_arrays: ClassVar[dict[str, float]] = {
        "_upto": 0, "_below": 0, "_grid": math.inf, "_summary": math.inf, "_m": 0,
        "_ref_mean": 0.0, "_ref_std": 0.0, "_tau": 1.0, "_factor": 1.0, "_kolmogorov": 0.0,
    }  # fmt: skip
    _fenced = True
    spec: KSWindowSpec

    def __init__(self, spec: KSWindowSpec, *, capacity: int = 64) -> None:
        super().__init__(spec, capacity=capacity)

    def _build(self, spec: Any, *, family_size: int, seed: int) -> KSWindowDetector:
        return KSWindowDetector(spec, family_size=family_size, seed=seed)

    def _init_extra(self) -> None:
        spec = self.spec
        self._bootstrap = spec.calibration == "bootstrap"
        # The window's ECDF at and just before each of its points, as ks_statistic_ranked's.
        self._at = np.arange(1, spec.window + 1) / spec.window
        self._before = self._at - 1.0 / spec.window
        # The grid size is known once the first member is steady (the reference's size, or
        # the grid's cap): until then no row exists.
        self._grid_size = 0
        # Grid rows are padded with +inf to a power of two, the span binary lifting walks.
        self._grid_width = 1
        # Each row's last point of every segment (``_summary``), searched before the segment.
        self._segment = 1
        self._summary_width = 1
        # Rows tested together per block: its scratch (4 x block x window values) in cache.
        self._block = max(1, 32_768 // spec.window)
        #: How a block's ranks are sorted (the sorting network for the windows it takes).
        self._sort_kind = _rank_sort_kind(spec.window)
        self._buffers: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def _alloc_extra(self, capacity: int) -> None:
        w = self._window
        self._upto = np.zeros((capacity, w), dtype=np.int16)
        self._below = np.zeros((capacity, w), dtype=np.int16)
        self._grid = np.full((capacity, self._grid_width), np.inf)
        self._summary = np.full((capacity, self._summary_width), np.inf)
        self._m = np.zeros(capacity, dtype=np.int64)
        self._ref_mean = np.zeros(capacity)
        self._ref_std = np.zeros(capacity)
        self._tau = np.ones(capacity)
        self._factor = np.ones(capacity)
        #: ``sqrt(-0.5 ln(alpha / 2))`` of each member's alpha, computed as ks_critical does.
        self._kolmogorov = np.zeros(capacity)

    def _load_extra(self, row: int, member: _Member, state: dict[str, Any]) -> None:
        extra = state["extra"]
        grid = extra["grid"]
        self._grid[row, : grid.size] = grid
        self._grid[row, grid.size :] = np.inf
        segment = self._segment
        self._summary[row] = self._grid[row, segment - 1 :: segment]
        self._m[row] = int(extra["m"])
        mean, std, tau, factor = (float(v) for v in extra["ref"])
        self._ref_mean[row], self._ref_std[row] = mean, std
        self._tau[row], self._factor[row] = tau, factor
        alpha = test_alpha(self.spec.false_alarm_every, self._stride, member.family_size)
        self._kolmogorov[row] = math.sqrt(-0.5 * math.log(alpha / 2.0))
        values = self._win[row]
        self._upto[row] = grid.searchsorted(values, "right")
        self._below[row] = grid.searchsorted(values, "left")

    def _accepts(self, state: dict[str, Any]) -> bool:
        grid = np.asarray(state["extra"]["grid"], dtype=np.float64)
        if self._grid_size == 0:
            self._grid_size = grid.size
            self._grid_width = 1 << (grid.size - 1).bit_length()
            self._segment = min(_SEGMENT, self._grid_width)
            self._summary_width = self._grid_width // self._segment
            self._grid = np.full((self._capacity, self._grid_width), np.inf)
            self._summary = np.full((self._capacity, self._summary_width), np.inf)
        # A reference of another size (a file changed between runs): stays per object.
        return grid.size == self._grid_size and state["fence"] is not None

    def _save_extra(self, row: int) -> Any:
        extra = {
            "grid": self._grid[row, : self._grid_size],
            "m": int(self._m[row]),
            "ref": [
                float(self._ref_mean[row]),
                float(self._ref_std[row]),
                float(self._tau[row]),
                float(self._factor[row]),
            ],
        }
        return extra

    def _on_write(
        self,
        arows: np.ndarray,
        seg: np.ndarray,
        value_rows: np.ndarray,
        slots: np.ndarray,
        values: np.ndarray,
    ) -> None:
        upto, below = self._ranks(value_rows, values)
        self._upto.reshape(-1)[slots] = upto
        self._below.reshape(-1)[slots] = below

    def _ranks(self, value_rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid points ``<=`` and ``<`` each value, in its member's grid: exact counts (the
        searchsorted of every member at once, see ``_count``)."""
        upto, tied = self._count(value_rows, values, np.less_equal, ties=True)
        below = upto
        # Only a value equal to a grid point has fewer points below it than up to it.
        if tied.size:
            below = upto.copy()
            below[tied] = self._count(value_rows[tied], values[tied], np.less)[0]
        return upto, below

    def _count(
        self, value_rows: np.ndarray, values: np.ndarray, op: Any, *, ties: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per value, how many points ``p`` of its grid row satisfy ``op(p, value)`` and, with
        ``ties``, the positions of the values equal to a point of their row.

        The points that satisfy ``op`` are a prefix of the sorted row (the +inf padding never
        in it), so the count is found by binary lifting, one gather and one compare per power
        of two, in two levels: first among the row's summary (the last point of each segment
        of ``_segment`` points; small enough to stay in cache), then inside the one segment
        that holds the end of the prefix (a few adjacent cache lines of the grid). Summary
        point ``i`` satisfies ``op`` exactly when the row's first ``(i + 1) * segment``
        points do, so the search inside the segment starts where the prefix of whole
        segments ends; the count is the same exact count a one-level search finds.

        In blocks with in-place operations: fresh temporaries the size of a whole batch are
        mapped afresh by the allocator each time, and their page faults cost more than the
        arithmetic. An increment is ``step * ok`` added, not an ``add(..., where=ok)``: a
        masked ufunc loop costs ten times a plain one.
        """
        grid = self._grid.reshape(-1)
        summary = self._summary.reshape(-1)
        width, segment, points = self._grid_width, self._segment, self._summary_width
        size = self._grid_size
        # The ranks' own type: a scatter of int64 counts into int16 rows costs three times
        # a scatter of int16 ones.
        out = np.empty(values.size, dtype=np.int16)
        tied = np.zeros(values.size if ties else 0, dtype=bool)
        span = _RANK_BLOCK
        go = np.empty(span, dtype=bool)
        increment = np.empty(span, dtype=np.int64)
        base = np.empty(span, dtype=np.int64)
        index = np.empty(span, dtype=np.int64)
        for start in range(0, values.size, span):
            v = values[start : start + span]
            rows = value_rows[start : start + span]
            n = v.size
            ok, inc, first, at = go[:n], increment[:n], base[:n], index[:n]
            # The absolute index of the first summary point not yet known to satisfy ``op``
            # (the row's last one is left to the final look below).
            np.multiply(rows, points, out=at)
            step = points >> 1
            while step:
                op(summary[step - 1 :][at], v, out=ok)
                np.multiply(ok, step, out=inc)
                at += inc
                step >>= 1
            # Row r's summary point j ends segment j, which starts at grid index
            # r * width + j * segment = (r * points + j) * segment.
            at *= segment
            step = segment >> 1
            while step:
                op(grid[step - 1 :][at], v, out=ok)
                np.multiply(ok, step, out=inc)
                at += inc
                step >>= 1
            # The steps cover all but the segment's last point: one more look settles it
            # (known not to satisfy ``op`` unless it is the row's last point).
            op(grid[at], v, out=ok)
            at += ok
            np.multiply(rows, width, out=first)
            if ties:
                # The greatest point ``<=`` the value equals it (index ``at - 1`` is in the
                # row when the count is positive; otherwise it is not read as a tie).
                tie = tied[start : start + n]
                np.equal(grid[at - 1], v, out=tie)
                tie &= at > first
            at -= first
            # Padding counts only for an infinite value (the fence keeps values finite):
            # as for searchsorted, the row's real points bound the count.
            np.minimum(at, size, out=out[start : start + n])
        return out, np.flatnonzero(tied)

    def _distances(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: the KS distance, the mean shift from the reference mean, and the sum of
        squares of the centred window.

        Rows go through in blocks whose scratch arrays are allocated once and stay in cache:
        a temporary of all due rows at once (16 MB for 2,000 rows) is mapped afresh by the
        allocator on every call and costs its page faults, more than the arithmetic.
        """
        k = rows.size
        w = self._window
        g = float(self._grid_size)
        at, before = self._at, self._before
        statistic = np.empty(k)
        shift = np.empty(k)
        dot = np.empty(k)
        block = self._block
        sort_kind: Any = self._sort_kind
        ranks, ranks_left, steps, centred = self._scratch()
        for start in range(0, k, block):
            part = rows[start : start + block]
            b = part.size
            up = ranks[:b]
            np.take(self._upto, part, axis=0, out=up)
            low = ranks_left[:b]
            np.take(self._below, part, axis=0, out=low)
            tied = (up != low).any(axis=1)
            # Integers sort to one order whatever the algorithm (see ``_rank_sort_kind``).
            up.sort(axis=1, kind=sort_kind)
            ecdf = steps[:b]
            difference = centred[:b]
            # Ranks count grid points: the reference's ECDF is read on its grid. The
            # operations are ks_statistic_ranked's, on the same operands, in the same order.
            np.divide(up, g, out=ecdf)
            np.subtract(at, ecdf, out=difference)
            upper = difference.max(axis=1)
            if tied.any():
                low.sort(axis=1, kind=sort_kind)
                np.divide(low, g, out=ecdf)
            # Otherwise no value is on a grid point: the ranks below equal the ranks up to,
            # and so does their ECDF (the detector divides them again, to the same floats).
            np.subtract(ecdf, before, out=difference)
            np.maximum(upper, difference.max(axis=1), out=statistic[start : start + b])
            held = centred[:b]
            np.take(self._win, part, axis=0, out=held)
            np.subtract(held, self._ref_mean[part][:, None], out=held)
            np.divide(held.sum(axis=1), w, out=shift[start : start + b])
            # Stacked vector products: each row's is the BLAS dot product a 1-D ``@`` is.
            dot[start : start + b] = np.matmul(held[:, None, :], held[:, :, None]).reshape(-1)
        return statistic, shift, dot

    def _scratch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._buffers is None:
            shape = (self._block, self._window)
            self._buffers = (
                np.empty(shape, dtype=np.int16),
                np.empty(shape, dtype=np.int16),
                np.empty(shape),
                np.empty(shape),
            )
        return self._buffers

    def _test(self, rows: np.ndarray) -> list[Reading]:
        """KSWindowDetector._evaluate of every row in ``rows`` at once."""
        spec = self.spec
        w = self._window
        statistic, shift, dot = self._distances(rows)
        mf = self._m[rows].astype(np.float64)
        if self._bootstrap:
            critical = self._kolmogorov[rows] * np.sqrt((w + mf) / (w * mf)) * self._factor[rows]
        else:
            tau = self._tau[rows]
            n_eff = w / tau
            m_eff = mf / tau
            critical = self._kolmogorov[rows] * np.sqrt((n_eff + m_eff) / (n_eff * m_eff))
        ref_std = self._ref_std[rows]
        std = np.sqrt(np.maximum(dot / w - shift * shift, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            spread_ok = ref_std > 0
            effect = np.where(
                spread_ok,
                shift / ref_std,
                np.where(shift == 0, 0.0, np.copysign(np.inf, shift)),
            )
            ratio = np.where(spread_ok, std / ref_std, np.where(std == 0, 1.0, np.inf))
            spread = np.where(ratio > 0, np.maximum(ratio, 1.0 / ratio), np.inf)
        material = (np.abs(effect) >= spec.min_shift) | (spread >= spec.min_scale_ratio)
        candidate = material & (statistic >= critical)
        return self._conclude(rows, statistic, effect, critical, candidate, Verdict.DRIFT)


def g_statistics_2x2(w0: np.ndarray, w1: np.ndarray, r0: np.ndarray, r1: np.ndarray) -> np.ndarray:
    """:func:`~detectors.calibration.g_statistic_2x2` of every row's four counts at once,
    the same value bit for bit.

    The same IEEE operations on the same operands: the sums, products and quotients of
    whole-number counts are element-wise; the log is numpy's, as there (its loop gives an
    element the same bits whatever the array's length or stride; ``math.log`` would not:
    it differs in the last bit for some ratios); and numpy sums the up to four kept terms
    of the scalar one after the other, so a cell not kept is a 0.0 added in its place, exactly
    (no term is -0.0: a kept cell's count is positive, and the log of 1 is +0.0).

    >>> rows = g_statistics_2x2(np.array([3.0, 0.0]), np.array([97.0, 0.0]),
    ...                         np.array([12.0, 5.0]), np.array([988.0, 995.0]))
    >>> rows.tolist() == [g_statistic_2x2(3.0, 97.0, 12.0, 988.0), 0.0]
    True
    """
    c0 = w0 + r0
    c1 = w1 + r1
    total = w0 + w1 + r0 + r1
    s0 = w0 + w1
    s1 = r0 + r1
    k = total.size
    terms = np.zeros(k)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Cells in the scalar's order, each added to the running sum as np.sum adds them.
        for observed, expected in (
            (w0, s0 * c0 / total),
            (w1, s0 * c1 / total),
            (r0, s1 * c0 / total),
            (r1, s1 * c1 / total),
        ):
            kept = observed > 0
            term = np.zeros(k)
            seen = observed[kept]
            term[kept] = seen * np.log(seen / expected[kept])
            terms = terms + term
    doubled = 2.0 * terms
    # The scalar's early 0.0 (an empty table, row or column), then its max(0.0, g).
    tested = (total > 0) & (c0 > 0) & (c1 > 0) & (doubled > 0.0)
    g: np.ndarray = np.where(tested, doubled, 0.0)
    return g


class RateWindowBank(_WindowBank):
    """``rate_window`` detectors of one spec (against the reference rate, or an absolute
    ``threshold``), steady members held as rows: the window's 0 / 1 values, the count of 1s,
    the reference's counts.

    The count of 1s moves by whole numbers, exact in a float as the detector keeps it; the
    tests of a block of rows are the detector's ``g_statistic_2x2`` on the same four counts,
    row by row, computed at once (:func:`g_statistics_2x2`, the same bits).

    >>> spec = RateWindowSpec(window=200, min_samples=100, stride=50, reference={"size": 500})
    >>> bank = RateWindowBank(spec)
    >>> a = bank.add()
    >>> rng = np.random.default_rng(0)
    >>> bank.update_many([a], [(rng.random(1000) < 0.01) * 1.0])[0].verdict.value
    'ok'
    >>> bank.update_many([a], [(rng.random(400) < 0.2) * 1.0])[0].verdict.value
    'drift'
    """

    _spec_class: ClassVar[type[WindowSpec]] = RateWindowSpec
    #: The detector class of ``_spec_class``; its ``variant_for`` picks the threshold variant.
    _detector_class: ClassVar[type[WindowRateDetector[Any]]] = RateWindowDetector
    _row_arrays: ClassVar[dict[str, float]] = {
        "_ones": 0.0,
        "_ref_ones": 0.0,
        "_ref_n": 0,
        "_critical": 0.0,
    }
    spec: ThresholdRateSpec
    _ones: np.ndarray
    _ref_ones: np.ndarray
    _ref_n: np.ndarray
    _critical: np.ndarray

    def __init__(self, spec: ThresholdRateSpec, *, capacity: int = 64) -> None:
        super().__init__(spec, capacity=capacity)

    def _build(self, spec: Any, *, family_size: int, seed: int) -> Any:
        detector_class = self._detector_class.variant_for(spec)
        return detector_class(spec, family_size=family_size, seed=seed)

    def _load_extra(self, row: int, member: _Member, state: dict[str, Any]) -> None:
        extra = state["extra"]
        self._ones[row] = float(extra["ones"])
        ref_ones, ref_n = extra["ref"]
        self._ref_ones[row] = float(ref_ones)
        self._ref_n[row] = int(ref_n)
        spec = self.spec
        alpha = test_alpha(spec.false_alarm_every, self._stride, member.family_size)
        one_sided = spec.alert_on != "both"
        self._critical[row] = chi2_critical(2.0 * alpha if one_sided else alpha, 1)

    def _save_extra(self, row: int) -> Any:
        extra = {
            "ones": float(self._ones[row]),
            "ref": [float(self._ref_ones[row]), int(self._ref_n[row])],
        }
        return extra

    def _prepare(self, flat: np.ndarray) -> np.ndarray:
        # As the detector's: any non-zero value counts as 1.
        binary: np.ndarray = (flat != 0.0).astype(np.float64)
        return binary

    def _on_write(
        self,
        arows: np.ndarray,
        seg: np.ndarray,
        value_rows: np.ndarray,
        slots: np.ndarray,
        values: np.ndarray,
    ) -> None:
        # The window is full: each value written evicts the one in its slot.
        delta = values - self._win.reshape(-1)[slots]
        self._ones[arows] += np.bincount(seg, weights=delta, minlength=arows.size)

    def _test(self, rows: np.ndarray) -> list[Reading]:
        spec = self.spec
        w = self._window
        ones = self._ones[rows]
        rate = ones / w
        ref_n = self._ref_n[rows]
        ref_ones = self._ref_ones[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            ref_rate = np.where(ref_n > 0, ref_ones / ref_n, np.nan)
        effect = rate - ref_rate
        direction = spec.alert_on
        if spec.threshold is not None:
            limit = spec.threshold
            above, below = rate > limit, rate < limit
            candidate = {"increase": above, "decrease": below, "both": above | below}[direction]
            threshold = np.full(rows.size, limit)
            return self._conclude(rows, rate, effect, threshold, candidate, Verdict.ANOMALY)
        if rows.size <= _SCALAR_G_ROWS:
            tables = zip(ones.tolist(), ref_ones.tolist(), ref_n.tolist(), strict=True)
            g = np.array([g_statistic_2x2(o, w - o, r1, n - r1) for o, r1, n in tables])
        else:
            g = g_statistics_2x2(ones, w - ones, ref_ones, ref_n - ref_ones)
        signed = {"increase": effect, "decrease": -effect, "both": np.abs(effect)}[direction]
        critical = self._critical[rows]
        candidate = (signed >= spec.min_difference) & (g >= critical)
        return self._conclude(rows, g, effect, critical, candidate, Verdict.DRIFT)


class MissingRateBank(RateWindowBank):
    """``missing_rate`` detectors of one spec: the test of ``rate_window`` (the detectors are
    :class:`~detectors.rates.WindowRateDetector` and its threshold variant under another
    spec), on the 1.0 the engine feeds where the feature was missing. Rows, tests and
    checkpoints are :class:`RateWindowBank`'s; a checkpoint names no class, only its spec, so
    a member's bytes are those of its :class:`~detectors.missing.MissingRateDetector` (or
    :class:`~detectors.missing.MissingRateLimitDetector`) twin.

    >>> spec = MissingRateSpec(window=200, min_samples=100, stride=50, reference={"size": 500})
    >>> bank = MissingRateBank(spec)
    >>> a = bank.add()
    >>> rng = np.random.default_rng(0)
    >>> bank.update_many([a], [(rng.random(1000) < 0.01) * 1.0])[0].verdict.value
    'ok'
    >>> bank.update_many([a], [(rng.random(400) < 0.2) * 1.0])[0].verdict.value, bank.banked(a)
    ('drift', True)
    >>> type(bank.detector(a)).__name__
    'MissingRateDetector'
    """

    _spec_class = MissingRateSpec
    _detector_class = MissingRateDetector


class QuantileBank(_WindowBank):
    """``quantile`` detectors of one spec (against an absolute ``threshold``, or a multiple of
    the reference's quantile), steady members held as rows: one partition of every due row's
    window per test.

    The window quantile is :func:`~detectors.quantile.linear_quantile`'s: the two order
    statistics a partition leaves in place do not depend on how it got there, and the
    interpolation is the same floating-point expression.

    >>> spec = QuantileSpec(q=0.9, window=200, min_samples=100, stride=50, reference={"size": 500})
    >>> bank = QuantileBank(spec)
    >>> a = bank.add()
    >>> rng = np.random.default_rng(0)
    >>> bank.update_many([a], [rng.lognormal(0.0, 0.3, 1000)])[0].verdict.value
    'ok'
    >>> bank.update_many([a], [rng.lognormal(1.0, 0.3, 400)])[0].verdict.value
    'drift'
    """

    _spec_class = QuantileSpec
    _fenced = True
    _row_arrays: ClassVar[dict[str, float]] = {
        "_ref_quantile": 0.0,
        "_limit": 0.0,
        "_ref_above": 0.0,
        "_ref_n": 0,
        "_critical": 0.0,
    }
    spec: QuantileSpec
    _ref_quantile: np.ndarray
    _limit: np.ndarray
    _ref_above: np.ndarray
    _ref_n: np.ndarray
    _critical: np.ndarray

    def __init__(self, spec: QuantileSpec, *, capacity: int = 64) -> None:
        super().__init__(spec, capacity=capacity)

    def _build(self, spec: Any, *, family_size: int, seed: int) -> Any:
        return QuantileDetector.variant_for(spec)(spec, family_size=family_size, seed=seed)

    def _load_extra(self, row: int, member: _Member, state: dict[str, Any]) -> None:
        quantile, limit, above, n = state["extra"]["ref"]
        self._ref_quantile[row], self._limit[row] = float(quantile), float(limit)
        self._ref_above[row], self._ref_n[row] = float(above), int(n)
        alpha = test_alpha(self.spec.false_alarm_every, self._stride, member.family_size)
        self._critical[row] = chi2_critical(2.0 * alpha, 1)

    def _save_extra(self, row: int) -> Any:
        return {
            "ref": [
                float(self._ref_quantile[row]),
                float(self._limit[row]),
                float(self._ref_above[row]),
                int(self._ref_n[row]),
            ]
        }

    def _window_quantile(self, values: np.ndarray) -> np.ndarray:
        """linear_quantile of each row, as the detector computes it."""
        last = self._window - 1
        virtual = last * self.spec.q
        below = math.floor(virtual)
        if below >= last:
            a = b = values.max(axis=1)
            gamma = virtual + 1.0
        else:
            part = np.partition(values, (below, below + 1), axis=1)
            a = part[:, below]
            b = part[:, below + 1]
            gamma = virtual - below
        diff = b - a
        quantile: np.ndarray = b - diff * (1.0 - gamma) if gamma >= 0.5 else a + diff * gamma
        return quantile

    def _test(self, rows: np.ndarray) -> list[Reading]:
        spec = self.spec
        values = self._win[rows]
        quantile = self._window_quantile(values)
        if spec.threshold is not None:
            limit = spec.threshold
            with np.errstate(divide="ignore", invalid="ignore"):
                effect = quantile / limit if limit else np.full(rows.size, np.nan)
            threshold = np.full(rows.size, limit)
            return self._conclude(
                rows, quantile, effect, threshold, quantile > limit, Verdict.ANOMALY
            )
        w = self._window
        limits = self._limit[rows]
        ref_quantile = self._ref_quantile[rows]
        ref_above = self._ref_above[rows]
        ref_n = self._ref_n[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            # The detector's ``if self._ref_quantile``: NaN is truthy, only 0 is not.
            effect = np.where(ref_quantile != 0, quantile / ref_quantile, np.nan)
        above = np.count_nonzero(values > limits[:, None], axis=1).astype(np.float64)
        g = np.array(
            [
                g_statistic_2x2(x, w - x, r, n - r)
                for x, r, n in zip(above.tolist(), ref_above.tolist(), ref_n.tolist(), strict=True)
            ]
        )
        beyond_chance = (above / w > ref_above / ref_n) & (g >= self._critical[rows])
        candidate = (quantile > limits) & beyond_chance
        return self._conclude(rows, quantile, effect, limits, candidate, Verdict.DRIFT)


class BankMember:
    """One member of a :class:`KSWindowBank` as a :class:`~detectors.base.Detector`: each call
    is the bank's for this member alone (the batched path is ``update_flat``).

    >>> spec = KSWindowSpec(window=100, min_samples=50, stride=10, reference={"size": 200})
    >>> bank = KSWindowBank(spec)
    >>> det = bank.handle(bank.add())
    >>> det.update_many(np.random.default_rng(1).normal(size=400)).verdict.value
    'ok'
    >>> det.events_until_test(), bank.banked(det.number)
    (10, True)
    """

    __slots__ = ("_entry", "bank", "number")

    def __init__(self, bank: _WindowBank, number: int) -> None:
        self.bank = bank
        self.number = number
        # A removed member's number goes to the next one added: the handle must not follow.
        self._entry = bank._member(number)

    @property
    def live(self) -> bool:
        """Still this handle's member (not removed from the bank)."""
        bank, number = self.bank, self.number
        entry = self._entry
        return not entry.removed and bank._members[number] is entry

    def _number(self) -> int:
        if not self.live:
            raise LookupError(f"bank member {self.number} was removed")
        return self.number

    def update(self, value: Any) -> Reading:
        return self.update_many(np.array([value], dtype=np.float64))

    def update_many(self, values: Any) -> Reading:
        return self.bank.update_many([self._number()], [values])[0]

    def reading(self) -> Reading:
        return self.bank.reading(self._number())

    def events_until_test(self) -> int | None:
        return self.bank.events_until_test(self._number())

    def reset(self) -> None:
        self.bank.reset(self._number())

    def to_bytes(self) -> bytes:
        return self.bank.to_bytes(self._number())
