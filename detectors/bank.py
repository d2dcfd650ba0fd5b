"""Detector banks: the steady-state of many ``ks_window`` detectors of one spec kept as arrays,
so that a handful of numpy calls per batch tests every member that is due.

A member starts as an ordinary :class:`~detectors.numeric.KSWindowDetector` (the reference and
the window fill through the per-object code, which owns the fence, the grid, the bootstrap and
every first-time path). Once its fixed reference is released and its window is full, only the
steady-state loop is left (admit, slide, rank, test every ``stride``), and the member moves into
the bank's rows by way of its checkpoint state. From then on a batch of many members costs one
pass of array operations per stride crossed, whatever the number of members.

Equivalence: for the same values in the same order, a member's Readings equal its per-object
twin's bit for bit, and :meth:`KSWindowBank.to_bytes` writes the same bytes as the twin's
``to_bytes`` (so checkpoints are interchangeable both ways). The operations are the same IEEE
operations on the same operands: row sums reduce each contiguous row as a 1-D sum does
(pairwise), the dot product of each row goes through the same BLAS ``ddot`` by way of stacked
``matmul``, ranks are exact counts (binary lifting over each member's grid), and the KS
distance is a maximum, which no order changes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detectors.base import INCONCLUSIVE, STATE_VERSION, Reading, Verdict
from detectors.calibration import test_alpha
from detectors.extremes import MAGNITUDE_LIMIT
from detectors.numeric import KSWindowDetector, KSWindowSpec
from detectors.registry import restore_detector
from detectors.serialization import StateError, pack, unpack

__all__ = ["KSWindowBank"]

log = logging.getLogger(__name__)

_NO_SINCE = -1
#: Values ranked per block: the scratch of one block (a few arrays of it) stays in cache.
_RANK_BLOCK = 8192


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


class KSWindowBank:
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

    def __init__(self, spec: KSWindowSpec, *, capacity: int = 64) -> None:
        if not isinstance(spec, KSWindowSpec):
            raise ValueError(f"a KSWindowBank holds ks_window detectors, not {type(spec).__name__}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.spec = spec
        self._window = spec.window
        self._stride = spec.stride
        self._bootstrap = spec.calibration == "bootstrap"
        self._spec_json = spec.model_dump(mode="json")
        # The window's ECDF at and just before each of its points, as ks_statistic_ranked's.
        self._at = np.arange(1, spec.window + 1) / spec.window
        self._before = self._at - 1.0 / spec.window
        self._members: list[_Member] = []
        self._free: list[int] = []
        self._rows = 0
        self._capacity = capacity
        # The grid size is known once the first member is steady (the reference's size, or
        # the grid's cap): until then no row exists.
        self._grid_size = 0
        # Rows tested together per block: its scratch (4 x block x window values) in cache.
        self._block = max(1, 32_768 // spec.window)
        self._buffers: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._alloc(capacity)

    # -- storage ----------------------------------------------------------------------------

    def _alloc(self, capacity: int) -> None:
        w = self._window
        g = max(self._grid_size, 1)
        self._win = np.zeros((capacity, w))
        self._upto = np.zeros((capacity, w), dtype=np.int16)
        self._below = np.zeros((capacity, w), dtype=np.int16)
        self._grid = np.zeros((capacity, g))
        self._pos = np.zeros(capacity, dtype=np.int64)
        self._seen = np.zeros(capacity, dtype=np.int64)
        self._since = np.full(capacity, _NO_SINCE, dtype=np.int64)
        self._m = np.zeros(capacity, dtype=np.int64)
        self._ref_mean = np.zeros(capacity)
        self._ref_std = np.zeros(capacity)
        self._tau = np.ones(capacity)
        self._factor = np.ones(capacity)
        #: ``sqrt(-0.5 ln(alpha / 2))`` of each member's alpha, computed as ks_critical does.
        self._kolmogorov = np.zeros(capacity)
        self._lo = np.zeros(capacity)
        self._hi = np.zeros(capacity)
        self._infinite = np.zeros(capacity, dtype=np.int64)
        self._clipped = np.zeros(capacity, dtype=np.int64)

    def _grow(self) -> None:
        old = self._capacity
        new = old * 2
        for name in (
            "_win", "_upto", "_below", "_grid", "_pos", "_seen", "_since", "_m", "_ref_mean",
            "_ref_std", "_tau", "_factor", "_kolmogorov", "_lo", "_hi", "_infinite", "_clipped",
        ):  # fmt: skip
            arr = getattr(self, name)
            grown = np.zeros((new, *arr.shape[1:]), dtype=arr.dtype)
            grown[:old] = arr
            setattr(self, name, grown)
        self._since[old:] = _NO_SINCE
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
        return len(self._members)

    def add(self, *, family_size: int = 1, seed: int = 0) -> int:
        """A new member (a fresh detector of the bank's spec); returns its number."""
        detector = KSWindowDetector(self.spec, family_size=family_size, seed=seed)
        self._members.append(_Member(detector, -1, seed, family_size, INCONCLUSIVE))
        return len(self._members) - 1

    def add_from_bytes(self, data: bytes) -> int:
        """A new member restored from a ``ks_window`` detector's (or this bank's) checkpoint."""
        detector = restore_detector(data)
        if not isinstance(detector, KSWindowDetector) or detector.spec != self.spec:
            raise StateError(
                f"checkpoint holds a {type(detector).__name__} of spec {detector.spec!r}, "
                f"not this bank's {self.spec!r}"
            )
        member = _Member(detector, -1, detector.seed, detector.family_size, detector.reading())
        self._members.append(member)
        self._settle(member)
        return len(self._members) - 1

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

    def reset(self, member: int) -> None:
        """Back to a fresh detector; the member's row is freed."""
        m = self._member(member)
        if m.detector is None:
            self._free.append(m.row)
            self._since[m.row] = _NO_SINCE
        m.detector = KSWindowDetector(self.spec, family_size=m.family_size, seed=m.seed)
        m.row = -1
        m.last = INCONCLUSIVE
        m.reference = None

    def _member(self, member: int) -> _Member:
        if not 0 <= member < len(self._members):
            raise IndexError(f"no member {member} in a bank of {len(self._members)}")
        return self._members[member]

    def _settle(self, member: _Member) -> None:
        """Move a per-object member into a row once only the steady-state loop is left."""
        detector = member.detector
        if detector is None or detector.spec.reference.mode != "fixed":
            return
        # Cheap checks first: this runs after every update of a filling member.
        if detector.events_until_test() is None or detector._window.count < self._window:
            return
        raw = unpack(detector.to_bytes())
        state = raw["state"]
        if state["window"]["count"] != self._window or not state["reference"]["ready"]:
            return
        grid = np.asarray(state["extra"]["grid"], dtype=np.float64)
        if self._grid_size == 0:
            self._grid_size = grid.size
            self._grid = np.zeros((self._capacity, grid.size))
        if grid.size != self._grid_size or state["fence"] is None:
            # A reference of another size (a file changed between runs): stays per object.
            return
        row = self._take_row()
        self._load_row(row, member, raw)
        member.detector = None
        member.row = row

    def _load_row(self, row: int, member: _Member, raw: dict[str, Any]) -> None:
        state = raw["state"]
        window = state["window"]
        extra = state["extra"]
        self._win[row] = window["buf"]
        self._pos[row] = int(window["pos"])
        self._seen[row] = int(state["seen"])
        since = state["since"]
        self._since[row] = _NO_SINCE if since is None else int(since)
        grid = extra["grid"]
        self._grid[row] = grid
        self._m[row] = int(extra["m"])
        mean, std, tau, factor = (float(v) for v in extra["ref"])
        self._ref_mean[row], self._ref_std[row] = mean, std
        self._tau[row], self._factor[row] = tau, factor
        alpha = test_alpha(self.spec.false_alarm_every, self._stride, member.family_size)
        self._kolmogorov[row] = math.sqrt(-0.5 * math.log(alpha / 2.0))
        self._lo[row], self._hi[row] = (float(v) for v in state["fence"])
        self._infinite[row], self._clipped[row] = (int(v) for v in state["extremes"])
        values = self._win[row]
        self._upto[row] = grid.searchsorted(values, "right")
        self._below[row] = grid.searchsorted(values, "left")
        member.reference = state["reference"]

    # -- checkpoints ------------------------------------------------------------------------

    def to_bytes(self, member: int) -> bytes:
        """The member's checkpoint: the bytes its per-object twin's ``to_bytes`` writes."""
        m = self._member(member)
        if m.detector is not None:
            return m.detector.to_bytes()
        row = m.row
        since = int(self._since[row])
        last = m.last
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
                    "extra": {
                        "grid": self._grid[row],
                        "m": int(self._m[row]),
                        "ref": [
                            float(self._ref_mean[row]),
                            float(self._ref_std[row]),
                            float(self._tau[row]),
                            float(self._factor[row]),
                        ],
                    },
                    "fence": [float(self._lo[row]), float(self._hi[row])],
                    "extremes": [int(self._infinite[row]), int(self._clipped[row])],
                },
            }
        )

    def detector(self, member: int) -> KSWindowDetector:
        """The member as a per-object detector (a copy, by way of its checkpoint)."""
        restored = restore_detector(self.to_bytes(member))
        assert isinstance(restored, KSWindowDetector)
        return restored

    # -- the batch --------------------------------------------------------------------------

    def update_many(self, members: Sequence[int], batches: Sequence[Any]) -> list[Reading]:
        """Feed ``batches[j]`` to ``members[j]``; each member's Reading, as its detector's."""
        if len(members) != len(batches):
            raise ValueError(
                f"update_many needs one batch per member: {len(members)} members, "
                f"{len(batches)} batches"
            )
        if len(set(members)) != len(members):
            raise ValueError("update_many takes each member at most once per call")
        results: list[Reading] = [INCONCLUSIVE] * len(members)
        steady: list[int] = []
        arrays: list[np.ndarray] = []
        for j, number in enumerate(members):
            m = self._member(number)
            detector = m.detector
            if detector is not None:
                results[j] = detector.update_many(batches[j])
                # The Reading that stands is the last test's, not a breach returned from
                # earlier in the batch.
                m.last = detector.reading()
                self._settle(m)
                continue
            steady.append(j)
            arrays.append(np.asarray(batches[j], dtype=np.float64).ravel())
        if steady:
            readings = self._steady([self._members[members[j]] for j in steady], arrays)
            for j, reading in zip(steady, readings, strict=True):
                results[j] = reading
        return results

    def _steady(self, members: list[_Member], arrays: list[np.ndarray]) -> list[Reading]:
        k = len(members)
        rows = np.fromiter((m.row for m in members), dtype=np.int64, count=k)
        lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=k)
        flat = np.concatenate(arrays) if k > 1 else arrays[0]
        if flat.size and math.isnan(np.minimum.reduce(flat)):
            # NaN is missing (rule 1): dropped, per member.
            kept = ~np.isnan(flat)
            lengths = np.bincount(np.repeat(np.arange(k), lengths)[kept], minlength=k)
            flat = flat[kept]
        results: list[Reading | None] = [None] * k
        breached: list[Reading | None] = [None] * k
        empty = np.flatnonzero(lengths == 0)
        for i in empty.tolist():
            m = members[i]
            m.last = Reading(
                math.nan, math.nan, Verdict.INCONCLUSIVE, self._window, m.last.threshold
            )
            results[i] = m.last
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
            local = np.arange(total) - starts[seg]
            values = flat[offset[active][seg] + local]
            values = self._admit(arows, seg, values)
            value_rows = arows[seg]
            slots = value_rows * w + (self._pos[value_rows] + local) % w
            self._win.reshape(-1)[slots] = values
            upto, below = self._ranks(value_rows, values)
            self._upto.reshape(-1)[slots] = upto
            self._below.reshape(-1)[slots] = below
            self._pos[arows] = (self._pos[arows] + take) % w
            self._seen[arows] += take
            offset[active] += take
            remaining[active] -= take
            due = np.flatnonzero(self._seen[arows] % stride == 0)
            if due.size:
                tested = active[due]
                for i, reading in zip(tested.tolist(), self._test(rows[tested]), strict=True):
                    results[i] = reading
                    if reading.breached:
                        breached[i] = reading
        out: list[Reading] = []
        for i, m in enumerate(members):
            last = results[i]
            if last is None:
                # No stride ended: the last Reading stands (the same object).
                out.append(m.last)
                continue
            m.last = last
            fired = breached[i]
            out.append(fired if fired is not None else last)
        return out

    def _admit(self, arows: np.ndarray, seg: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Fence.admit of each member's chunk: clipped to its fence, clipped values counted."""
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

    def _ranks(self, value_rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid points ``<=`` and ``<`` each value, in its member's grid: exact counts by
        binary lifting (the searchsorted of every member at once)."""
        g = self._grid_size
        grid = self._grid.reshape(-1)
        base = value_rows * g - 1
        upto = self._count(grid, base, values, np.less_equal)
        # Only a value equal to a grid point has fewer points below it than up to it.
        found = upto > 0
        tied = found.copy()
        tied[found] = grid[base[found] + upto[found]] == values[found]
        below = upto
        if tied.any():
            below = upto.copy()
            below[tied] = self._count(grid, base[tied], values[tied], np.less)
        return upto, below

    def _count(self, grid: np.ndarray, base: np.ndarray, values: np.ndarray, op: Any) -> np.ndarray:
        """Per value, how many points ``p`` of its grid row satisfy ``op(p, value)`` (a prefix
        of the sorted row): binary lifting, one gather and compare per power of two.

        In blocks with in-place operations: fresh temporaries the size of a whole batch are
        mapped afresh by the allocator each time, and their page faults cost more than the
        arithmetic.
        """
        g = self._grid_size
        top = 1 << (g.bit_length() - 1)
        out = np.empty(values.size, dtype=np.int64)
        span = _RANK_BLOCK
        probe = np.empty(span, dtype=np.int64)
        point = np.empty(span)
        go = np.empty(span, dtype=bool)
        for start in range(0, values.size, span):
            v = values[start : start + span]
            n = v.size
            at = base[start : start + span]
            count = out[start : start + n]
            count[:] = 0
            p, pt, ok = probe[:n], point[:n], go[:n]
            step = top
            while step:
                np.add(count, step, out=p)
                np.minimum(p, g, out=p)
                # A probe past the row's end reads its last point: counted only if the probe
                # itself lies inside (count + step <= g).
                fits = p == count + step
                np.add(p, at, out=p)
                np.take(grid, p, out=pt)
                op(pt, v, out=ok)
                ok &= fits
                count += ok * step
                step >>= 1
        return out

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
        ranks, ranks_left, steps, centred = self._scratch()
        for start in range(0, k, block):
            part = rows[start : start + block]
            b = part.size
            up = ranks[:b]
            np.take(self._upto, part, axis=0, out=up)
            low = ranks_left[:b]
            np.take(self._below, part, axis=0, out=low)
            tied = (up != low).any(axis=1)
            up.sort(axis=1)
            ecdf = steps[:b]
            # Ranks count grid points: the reference's ECDF is read on its grid.
            np.divide(up, g, out=ecdf)
            np.subtract(at, ecdf, out=ecdf)
            upper = ecdf.max(axis=1)
            if tied.any():
                low.sort(axis=1)
                np.divide(low, g, out=ecdf)
            else:
                # No value on a grid point: the ranks below equal the ranks up to.
                np.divide(up, g, out=ecdf)
            np.subtract(ecdf, before, out=ecdf)
            np.maximum(upper, ecdf.max(axis=1), out=statistic[start : start + b])
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
        conclusive = ~np.isnan(statistic)
        candidate = material & (statistic >= critical) & conclusive
        seen = self._seen[rows]
        since = self._since[rows]
        since = np.where(candidate, np.where(since == _NO_SINCE, seen, since), _NO_SINCE)
        self._since[rows] = since
        fired = candidate & (seen - since >= spec.persist)
        readings: list[Reading] = []
        drift, ok, inconclusive = Verdict.DRIFT, Verdict.OK, Verdict.INCONCLUSIVE
        for stat, eff, crit, fire, valid in zip(
            statistic.tolist(),
            effect.tolist(),
            critical.tolist(),
            fired.tolist(),
            conclusive.tolist(),
            strict=True,
        ):
            verdict = (drift if fire else ok) if valid else inconclusive
            readings.append(Reading(stat, eff, verdict, w, crit))
        return readings
