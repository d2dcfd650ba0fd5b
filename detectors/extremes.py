"""Extreme values: the one rule by which every numeric detector treats non-finite and absurd
values, so that a single hostile number cannot blind it.

The rule, applied in this order to every value a numeric detector (``ks_window``, ``adwin``,
``page_hinkley``, ``quantile``, and each feature of ``half_space_trees``) receives:

1. **NaN is missing**, as it always was: dropped, and watched by ``missing_rate``.
2. **Infinities and magnitudes past** :data:`MAGNITUDE_LIMIT` (1e150) are clamped to
   +-1e150, sign kept: an infinity is the most extreme of values, not an absent one (a
   latency of +inf is as slow as it gets). Still astronomically large, so a latency SLO sees
   it as a breach, but squares and sums of a window of them stay finite: no statistic
   overflows to inf or NaN. This is the whole rule for a detector that has no reference
   (``quantile`` with an absolute ``threshold``), and for any detector until its reference
   is complete (:data:`UNBOUNDED` is the fence then).
3. **Absurd is clipped to the reference's fence.** Once a detector's reference is complete,
   a :class:`Fence` is derived from it: ``median +- FENCE_WIDTHS x w``, where ``w`` is the
   wider of the reference's two tail widths ``q(1 - t) - median`` and ``median - q(t)``, with
   ``t = max(0.01, 5 / reference size)`` (so up to 1% of the reference, and at least 5 of
   its values, can be extreme on either side without moving the fence). For a normal signal
   that is about +-23 standard deviations; for a lognormal latency (sigma 1) the upper edge
   is about 9x its p99 (about one value in 200,000 of such a stream lies beyond it).
   Reference values and later values beyond the fence are clipped to it.
4. **Reference statistics leave the clipped values out.** The mean and standard deviation
   that standardize values for ADWIN / Page-Hinkley and size the effect gates, and the
   reference quantile (with the share of values above its limit) of ``quantile``, are
   computed over the reference values inside the fence (:meth:`Fence.inside`): a few
   extremes in the reference leave them as they would be without them. With no value
   clipped they are exactly what they were, so clean streams see no change at all. (The KS
   reference distribution keeps its clipped values, at the fence: a rank test counts them as
   the tail they are, and a clipped window value ties with them.)

Why clip rather than drop, for users of a monitoring product: a clipped value stays where it
belongs in the ordering, above (or below) every plausible reference value, so rank tests
(KS) and quantiles see exactly what they would have seen unclipped, and a stream that really
moves far keeps being seen as moved. What clipping removes is the leverage of one value on a
mean or a variance: one value at the fence moves a 500-value window's mean by about 0.05
reference std (the effect gates ask for 0.25), where one 1e308 made the reference std
infinite and hid every later shift. Every clipped value is counted (:class:`ExtremeCounts`).
A (nearly) constant reference has no spread to judge absurdity by; its fence falls back to
``FENCE_WIDTHS x max(|median|, 1)`` around the median, so a change from a constant stays
visible and only magnitudes absurd for it are clipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["FENCE_WIDTHS", "MAGNITUDE_LIMIT", "UNBOUNDED", "ExtremeCounts", "Fence"]

#: Values are clamped to +-this: a window of a million of them still squares and sums finitely.
MAGNITUDE_LIMIT = 1e150
#: The fence lies this many tail widths from the reference median.
FENCE_WIDTHS = 10.0
#: The tail quantile the width is read at, unless the reference is small (see ``_MIN_BEYOND``).
_TAIL = 0.01
#: At least this many reference values lie beyond the tail quantiles the width is read at.
_MIN_BEYOND = 5
# The reductions of the usual call's check, without ``ndarray.min``'s Python layer.
_MIN = np.minimum.reduce
_MAX = np.maximum.reduce


@dataclass(slots=True)
class ExtremeCounts:
    """Values one detector clipped (to the magnitude limit or its fence), and how many of
    those were infinities."""

    infinite: int = 0
    clipped: int = 0


class Fence:
    """Rule 3: the range a detector's values are clipped to, derived from its reference.

    >>> rng = np.random.default_rng(0)
    >>> clean = rng.normal(size=10_000)
    >>> ref = np.concatenate([clean, [1e12, -1.7976931348623157e308]])
    >>> fence = Fence.of(ref)
    >>> round(fence.lo), round(fence.hi)
    (-24, 24)
    >>> admitted = fence.admit(ref, ExtremeCounts())
    >>> fence.moments(admitted) == (float(clean.mean()), float(clean.std()))
    True
    """

    __slots__ = ("hi", "lo")

    def __init__(self, lo: float, hi: float) -> None:
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"a fence needs finite lo < hi, got lo={lo!r}, hi={hi!r}")
        self.lo = lo
        self.hi = hi

    @classmethod
    def of(cls, values: np.ndarray) -> Fence:
        """The fence of a reference (finite values: rules 1 and 2 already applied)."""
        if values.size == 0:
            return cls(-MAGNITUDE_LIMIT, MAGNITUDE_LIMIT)
        tail = min(0.25, max(_TAIL, _MIN_BEYOND / values.size))
        low, median, high = (float(v) for v in np.quantile(values, (tail, 0.5, 1.0 - tail)))
        width = max(high - median, median - low)
        if not width > 0.0:
            width = max(abs(median), 1.0)
        reach = FENCE_WIDTHS * width
        lo = max(median - reach, -MAGNITUDE_LIMIT)
        hi = min(median + reach, MAGNITUDE_LIMIT)
        if not lo < hi:
            # A median near the magnitude limit: any width is lost in rounding there.
            lo, hi = -MAGNITUDE_LIMIT, MAGNITUDE_LIMIT
        return cls(lo, hi)

    def raised_to(self, hi: float) -> Fence:
        """This fence with its upper edge at least ``hi`` (a limit clipping must not hide)."""
        return Fence(self.lo, min(max(self.hi, hi), MAGNITUDE_LIMIT))

    def admit(self, arr: np.ndarray, counts: ExtremeCounts) -> np.ndarray:
        """Rules 2 and 3: NaN-free ``arr`` (any shape) clipped to the fence, clipped values counted;
        ``arr`` itself when all lie inside (one min and one max tell).

        A value already at +-``MAGNITUDE_LIMIT`` was clamped, and counted, before a
        reference fence existed: it is clipped again, not counted again.

        >>> counts = ExtremeCounts()
        >>> UNBOUNDED.admit(np.array([1.0, np.inf, -1.7976931348623157e308]), counts).tolist()
        [1.0, 1e+150, -1e+150]
        >>> Fence(-5.0, 5.0).admit(np.array([1e150, 6.0, 0.5]), counts).tolist(), counts
        ([5.0, 5.0, 0.5], ExtremeCounts(infinite=1, clipped=3))
        """
        if arr.size == 0 or (_MIN(arr, None) >= self.lo and _MAX(arr, None) <= self.hi):
            return arr
        beyond = (arr < self.lo) | (arr > self.hi)
        if self.hi < MAGNITUDE_LIMIT or self.lo > -MAGNITUDE_LIMIT:
            beyond &= np.abs(arr) != MAGNITUDE_LIMIT
        counts.clipped += int(np.count_nonzero(beyond))
        counts.infinite += int(np.count_nonzero(np.isinf(arr)))
        clipped: np.ndarray = np.clip(arr, self.lo, self.hi)
        return clipped

    def inside(self, values: np.ndarray) -> np.ndarray:
        """Rule 4: the clipped ``values`` that lie strictly inside the fence; ``values``
        itself when none sits on it (or all do: nothing would be left to describe)."""
        inside = (values > self.lo) & (values < self.hi)
        if inside.all() or not inside.any():
            return values
        kept: np.ndarray = values[inside]
        return kept

    def moments(self, values: np.ndarray) -> tuple[float, float]:
        """Mean and std of :meth:`inside` ``values``: exactly ``values.mean()`` and
        ``values.std()`` when none was clipped."""
        kept = self.inside(values)
        return float(kept.mean()), float(kept.std())

    def to_list(self) -> list[float]:
        return [self.lo, self.hi]

    @classmethod
    def from_list(cls, raw: list[float] | None) -> Fence | None:
        return None if raw is None else cls(float(raw[0]), float(raw[1]))

    def __repr__(self) -> str:
        return f"Fence(lo={self.lo!r}, hi={self.hi!r})"


#: The fence before a reference gives one (and of a detector with no reference): rule 2.
UNBOUNDED = Fence(-MAGNITUDE_LIMIT, MAGNITUDE_LIMIT)
