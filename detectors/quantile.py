"""Quantile SLOs (p50 / p95 / p99, typically latency): a window quantile against an absolute
limit, or against a multiple of the reference's quantile when no limit is configured.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from detectors.base import BaseDetector, InputKind, Verdict
from detectors.calibration import chi2_critical, g_statistic_2x2
from detectors.extremes import ExtremeCounts, Fence
from detectors.window import WindowedDetector, WindowSpec

__all__ = ["QuantileDetector", "QuantileLimitDetector", "QuantileSpec", "linear_quantile"]

log = logging.getLogger(__name__)


def linear_quantile(values: np.ndarray, q: float) -> float:
    """``np.quantile(values, q)`` (linear method) of NaN-free ``values``, bit for bit.

    One partition instead of ``np.quantile``'s general machinery, which costs ten times
    the partition itself on a window of a thousand values.

    >>> v = np.random.default_rng(0).lognormal(size=1001)
    >>> all(linear_quantile(v, q) == np.quantile(v, q) for q in (0.01, 0.5, 0.99, 0.999))
    True
    """
    last = values.size - 1
    virtual = last * q
    below = math.floor(virtual)
    if below >= last:
        # As numpy: both neighbours are the maximum, the weight is taken from index -1.
        a = b = float(values.max())
        gamma = virtual + 1.0
    else:
        part = np.partition(values, (below, below + 1))
        a = float(part[below])
        b = float(part[below + 1])
        gamma = virtual - below
    diff = b - a
    # numpy's lerp: from the nearer end, so q = 1 gives exactly the maximum.
    return b - diff * (1.0 - gamma) if gamma >= 0.5 else a + diff * gamma


class QuantileSpec(WindowSpec):
    """A window quantile (p50 / p95 / p99) against an absolute SLO or the reference's."""

    input_kind: ClassVar[InputKind] = InputKind.NUMERIC
    type: Literal["quantile"] = "quantile"
    q: float = Field(default=0.99, gt=0.0, lt=1.0)
    #: Absolute limit (e.g. milliseconds); breached when the window quantile exceeds it.
    threshold: float | None = None
    #: Without ``threshold``: breached when the window quantile exceeds this multiple of the
    #: reference quantile, and more values than chance allows lie above that limit.
    max_ratio: float = Field(default=1.5, gt=1.0, le=1e6)


class QuantileDetector(WindowedDetector[QuantileSpec]):
    """The ``q`` quantile of the last ``window`` values.

    With ``threshold`` (an SLO such as p99 <= 800 ms) the verdict is ANOMALY while the
    window quantile exceeds it, and no reference is needed (:class:`QuantileLimitDetector`,
    which :meth:`variant_for` picks). Without, the limit is
    ``max_ratio`` times the reference quantile, and the verdict is DRIFT only when more
    window values lie above that limit than the reference makes plausible (one-sided
    G-test at the family-corrected alpha): a few slow requests in a small window of a
    heavy-tailed latency do not page.

    The quantile is computed with numpy's partition at each test (every ``stride`` events);
    River's rolling quantile costs a sorted insert per event and was slower per event.

    Examples
    --------
    >>> spec = QuantileSpec(q=0.99, threshold=300.0)
    >>> det = QuantileDetector.variant_for(spec)(spec)
    >>> rng = np.random.default_rng(0)
    >>> det.update_many(rng.lognormal(np.log(100), 0.3, 5000)).verdict.value
    'ok'
    >>> r = det.update_many(rng.lognormal(np.log(100), 0.6, 2000))
    >>> r.verdict.value, r.statistic > 300
    ('anomaly', True)
    """

    spec_class = QuantileSpec
    numeric_values = True

    def __init__(self, spec: QuantileSpec, *, family_size: int = 1, seed: int = 0) -> None:
        if (spec.threshold is not None) is not self.absolute_limit:
            raise ValueError(
                f"{type(self).__name__} takes a quantile spec "
                f"{'with' if self.absolute_limit else 'without'} a threshold "
                "(detectors.build_detector picks the class)"
            )
        super().__init__(spec, family_size=family_size, seed=seed)

    @classmethod
    def variant_for(cls, spec: QuantileSpec) -> type[BaseDetector[QuantileSpec]]:
        return QuantileLimitDetector if spec.threshold is not None else QuantileDetector

    def _reset_extra(self) -> None:
        self._ref_quantile = math.nan
        self._limit = math.nan
        self._ref_above = 0.0
        self._ref_n = 0

    def _make_fence(self, reference: np.ndarray) -> Fence | None:
        """The reference's fence, raised so that it lies at least as far above the relative
        limit as above the median: a clipped value stays above it."""
        fence = Fence.of(reference)
        # A trial clip, counted nowhere: the reference is admitted for real once fenced.
        _, limit = self._limit_of(fence.admit(reference, ExtremeCounts()), fence)
        return fence.raised_to(limit + 0.5 * (fence.hi - fence.lo))

    def _limit_of(self, values: np.ndarray, fence: Fence | None) -> tuple[float, float]:
        """The reference quantile and the limit ``max_ratio`` puts on the window's, from the
        reference values inside the fence (the extreme-value rule)."""
        if fence is not None:
            values = fence.inside(values)
        ref_quantile = float(np.quantile(values, self.spec.q))
        ratio = self.spec.max_ratio
        if ref_quantile > 0:
            return ref_quantile, ref_quantile * ratio
        return ref_quantile, ref_quantile + (ratio - 1.0) * float(values.std())

    def _on_reference(self) -> None:
        values = self._reference.ring.values()
        if self._fence is not None:
            values = self._fence.inside(values)
        self._ref_quantile, self._limit = self._limit_of(values, self._fence)
        self._ref_above = float(np.count_nonzero(values > self._limit))
        self._ref_n = int(values.size)

    def _test(self) -> tuple[float, float, float, bool]:
        values = self._window.values()
        quantile = linear_quantile(values, self.spec.q)
        limit = self._limit
        effect = quantile / self._ref_quantile if self._ref_quantile else math.nan
        n = values.size
        above = float(np.count_nonzero(values > limit))
        g = g_statistic_2x2(above, n - above, self._ref_above, self._ref_n - self._ref_above)
        beyond_chance = above / n > self._ref_above / self._ref_n and g >= chi2_critical(
            2.0 * self.alpha, 1
        )
        return quantile, effect, limit, bool(quantile > limit and beyond_chance)

    def _extra_state(self) -> dict[str, Any]:
        return {"ref": [self._ref_quantile, self._limit, self._ref_above, self._ref_n]}

    def _load_extra(self, state: dict[str, Any]) -> None:
        q, limit, above, n = state["ref"]
        self._ref_quantile, self._limit, self._ref_above = float(q), float(limit), float(above)
        self._ref_n = int(n)


class QuantileLimitDetector(QuantileDetector):
    """``quantile`` with a ``threshold`` (an SLO): ANOMALY while the window quantile exceeds
    it; no reference is kept and no fence (a huge latency must stay huge; the window
    quantile is robust anyway).

    >>> spec = QuantileSpec(q=0.5, threshold=10.0, window=100, min_samples=50, stride=10)
    >>> QuantileLimitDetector(spec).update_many(np.full(60, 20.0)).statistic
    20.0
    """

    absolute_limit = True
    breach_verdict = Verdict.ANOMALY

    def _make_fence(self, reference: np.ndarray) -> Fence | None:
        return None

    def _on_reference(self) -> None:
        return None

    def _test(self) -> tuple[float, float, float, bool]:
        quantile = linear_quantile(self._window.values(), self.spec.q)
        limit = self.spec.threshold
        assert limit is not None  # checked in __init__
        effect = quantile / limit if limit else math.nan
        return quantile, effect, limit, quantile > limit
