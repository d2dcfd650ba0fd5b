"""Extreme values: the one rule by which every numeric detector treats non-finite and absurd
values, so that a single hostile number cannot blind it.

The rule, applied in this order to every value a numeric detector (``ks_window``, ``adwin``,
``page_hinkley``, ``quantile``, and each feature of ``half_space_trees``) receives:

1. **Non-finite is missing.** NaN, +inf and -inf are dropped like an absent value; the
   infinities are counted (:attr:`ExtremeCounts.infinite`; NaN is how an absent value
   arrives, and ``missing_rate`` watches those). An infinity says nothing about *how* large
   a value was (``1e309`` in JSON decodes to inf), and a single one makes every mean, spread
   and sum it touches meaningless.
2. **Magnitudes past** :data:`MAGNITUDE_LIMIT` (1e150) are clamped to it, sign kept, and
   counted as clipped. Still astronomically large (a latency SLO sees it as a breach), but
   squares and sums of a window of them stay finite, so no statistic overflows to inf or NaN.
   This is the whole rule for a detector that has no reference (``quantile`` with an
   absolute ``threshold``): its window quantile is robust already, and a huge latency must
   stay huge there.
3. **Absurd is clipped to the reference's fence.** Once a detector's reference is complete,
   a :class:`Fence` is derived from it: ``median +- FENCE_WIDTHS x w``, where ``w`` is the
   wider of the reference's two tail widths ``q(1 - t) - median`` and ``median - q(t)``, with
   ``t = max(0.01, 5 / reference size)`` (so up to 1% of the reference, and at least 5 of
   its values, can be extreme on either side without moving the fence). For a normal signal
   that is about +-23 standard deviations; for a lognormal latency (sigma 1) the upper edge
   is about 9x its p99 (about one value in 200,000 of such a stream lies beyond it).
   Reference values and later values beyond the fence are clipped to it, and counted
   (:attr:`ExtremeCounts.clipped`).
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
infinite and hid every later shift. A (nearly) constant reference has no spread to judge
absurdity by; its fence falls back to ``FENCE_WIDTHS x max(|median|, 1)`` around the median,
so a change from a constant stays visible and only magnitudes absurd for it are clipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FENCE_WIDTHS",
    "MAGNITUDE_LIMIT",
    "ExtremeCounts",
    "Fence",
    "finite_values",
]

#: Values are clamped to +-this: a window of a million of them still squares and sums finitely.
MAGNITUDE_LIMIT = 1e150
#: The fence lies this many tail widths from the reference median.
FENCE_WIDTHS = 10.0
#: The tail quantile the width is read at, unless the reference is small (see ``_MIN_BEYOND``).
_TAIL = 0.01
#: At least this many reference values lie beyond the tail quantiles the width is read at.
_MIN_BEYOND = 5


@dataclass(slots=True)
class ExtremeCounts:
    """How many values one detector dropped as infinite and clipped as absurd."""

    infinite: int = 0
    clipped: int = 0


def finite_values(arr: np.ndarray, counts: ExtremeCounts) -> np.ndarray:
    """Rules 1 and 2: ``arr`` (float64, 1-D) without NaN / inf and clamped to +-1e150.

    ``arr`` itself, no copy, when every value is finite and within the limit (the minimum and
    maximum tell: either is NaN when a value is, and an infinity is past the limit).
    ``counts`` is bumped by the infinities dropped and the values clamped.

    >>> counts = ExtremeCounts()
    >>> finite_values(np.array([1.0, np.nan, np.inf, -1.7976931348623157e308]), counts).tolist()
    [1.0, -1e+150]
    >>> counts
    ExtremeCounts(infinite=1, clipped=1)
    """
    if arr.size == 0 or (arr.min() >= -MAGNITUDE_LIMIT and arr.max() <= MAGNITUDE_LIMIT):
        return arr
    finite = np.isfinite(arr)
    if not finite.all():
        counts.infinite += int(np.count_nonzero(np.isinf(arr)))
        arr = arr[finite]
    beyond = int(np.count_nonzero(np.abs(arr) > MAGNITUDE_LIMIT))
    if beyond:
        counts.clipped += beyond
        arr = np.clip(arr, -MAGNITUDE_LIMIT, MAGNITUDE_LIMIT)
    return arr


class Fence:
    """Rule 3: the range a detector's values are clipped to, derived from its reference.

    >>> rng = np.random.default_rng(0)
    >>> clean = rng.normal(size=10_000)
    >>> ref = np.concatenate([clean, [1e12, -1.7976931348623157e308]])
    >>> fence = Fence.of(ref)
    >>> round(fence.lo), round(fence.hi)
    (-24, 24)
    >>> fence.moments(fence.clip(ref)[0]) == (float(clean.mean()), float(clean.std()))
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

    def clip(self, arr: np.ndarray) -> tuple[np.ndarray, int]:
        """``arr`` clipped to the fence, and how many values were; ``arr`` itself if none.

        A value at +-``MAGNITUDE_LIMIT`` was clamped (and counted) by ``finite_values``
        already: it is clipped again, not counted again.
        """
        if arr.size == 0 or (arr.min() >= self.lo and arr.max() <= self.hi):
            return arr, 0
        beyond = (arr < self.lo) | (arr > self.hi)
        fresh = int(np.count_nonzero(beyond & (np.abs(arr) != MAGNITUDE_LIMIT)))
        return np.clip(arr, self.lo, self.hi), fresh

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
