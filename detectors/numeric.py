"""Numeric drift (features, prediction score, confidence, latency): a windowed two-sample
KS test in numpy, calibrated for autocorrelation and gated by effect size; River ADWIN and
Page-Hinkley on standardized values, gated by a material shift of the mean.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import Field
from river import drift

from detectors.base import InputKind
from detectors.calibration import (
    autocorrelation_time,
    ks_critical,
    ks_statistic,
    ks_statistic_ranked,
)
from detectors.window import Direction, RiverGatedDetector, WindowedDetector, WindowSpec

__all__ = [
    "AdwinDetector",
    "AdwinSpec",
    "KSWindowDetector",
    "KSWindowSpec",
    "PageHinkleyDetector",
    "PageHinkleySpec",
]

log = logging.getLogger(__name__)

_BOOTSTRAP_WINDOWS = 200
#: The reference ECDF is read from this many of its quantiles: F is off by at most 1/2048,
#: far below any critical distance, and each test costs a search in a cache-sized array.
_GRID = 2048
assert np.iinfo(np.int16).max >= _GRID, "ranks into the grid are stored as int16"


class KSWindowSpec(WindowSpec):
    """Windowed two-sample Kolmogorov-Smirnov test against the reference (numpy)."""

    input_kind: ClassVar[InputKind] = InputKind.NUMERIC
    type: Literal["ks_window"] = "ks_window"
    #: Materiality: the window mean must move this many reference standard deviations ...
    min_shift: float = Field(default=0.25, ge=0.0, le=100.0)
    #: ... or its spread change by this factor (either way).
    min_scale_ratio: float = Field(default=1.3, ge=1.0, le=100.0)
    #: ``analytic``: Kolmogorov's limit on effective sample sizes; ``bootstrap``: the scale of
    #: the critical value fitted at start-up to block-bootstrapped windows of the reference.
    calibration: Literal["analytic", "bootstrap"] = "analytic"
    #: Discount samples by the reference's autocorrelation time (effective sample size).
    autocorrelation: bool = True


class RiverNumericSpec(WindowSpec):
    """River drift detectors on standardized values, gated by a material shift of the mean."""

    input_kind: ClassVar[InputKind] = InputKind.NUMERIC
    window: int = Field(default=500, ge=10, le=1_000_000)
    min_shift: float = Field(default=0.25, ge=0.0, le=100.0)


class AdwinSpec(RiverNumericSpec):
    """River ADWIN; ``delta`` is divided by the family size."""

    type: Literal["adwin"] = "adwin"
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0)
    clock: int = Field(default=32, ge=1, le=10_000)
    max_buckets: int = Field(default=5, ge=2, le=100)
    min_window_length: int = Field(default=5, ge=1, le=100_000)
    grace_period: int = Field(default=10, ge=1, le=1_000_000)


class PageHinkleySpec(RiverNumericSpec):
    """River Page-Hinkley on values standardized by the reference (delta, threshold in std)."""

    type: Literal["page_hinkley"] = "page_hinkley"
    min_instances: int = Field(default=30, ge=1, le=1_000_000)
    delta: float = Field(default=0.1, ge=0.0, le=100.0)
    threshold: float = Field(default=50.0, gt=0.0, le=1e9)
    alpha: float = Field(default=0.9999, gt=0.0, le=1.0)
    mode: Literal["up", "down", "both"] = "both"


RiverNumericSpecT = TypeVar("RiverNumericSpecT", bound=RiverNumericSpec)


class KSWindowDetector(WindowedDetector[KSWindowSpec]):
    """Kolmogorov-Smirnov distance of the last ``window`` values to the reference.

    Tested every ``stride`` events at the family-corrected alpha, on effective sample sizes
    (the reference's autocorrelation time discounts both samples, so a slowly wandering
    process is not mistaken for a change), and gated by materiality: the mean moved by
    ``min_shift`` reference std or the spread changed by ``min_scale_ratio``. The effect is
    the signed standardized mean shift.

    Examples
    --------
    >>> det = KSWindowDetector(KSWindowSpec(reference={"size": 5000}))
    >>> rng = np.random.default_rng(7)
    >>> det.update_many(rng.normal(size=50_000)).verdict.value
    'ok'
    >>> shifted = rng.normal(1.0, 1.0, size=1000)
    >>> readings = [det.update_many(shifted[i:i + 100]) for i in range(0, 1000, 100)]
    >>> [r.verdict.value for r in readings].index("drift")
    4
    >>> round(readings[-1].effect, 1)
    1.0
    """

    spec_class = KSWindowSpec
    numeric_values = True

    def _reset_extra(self) -> None:
        self._grid = np.zeros(0)
        self._m = 0
        # Per window slot: grid points <= and < its value, valid up to ``_ranked`` events.
        # int16: a rank is at most the grid size (<= _GRID), and 16,000 detectors hold these.
        self._upto = np.zeros(self.spec.window, dtype=np.int16)
        self._below = np.zeros(self.spec.window, dtype=np.int16)
        self._ranked: int | None = None
        self._ref_mean = math.nan
        self._ref_std = math.nan
        self._tau = 1.0
        self._factor = 1.0

    def _on_reference(self) -> None:
        spec = self.spec
        ordered = self._reference.ring.ordered()
        sorted_ref = np.sort(ordered)
        self._m = ordered.size
        self._grid = self._quantile_grid(sorted_ref)
        self._ranked = None
        # The extreme-value rule: clipped reference values do not widen the std.
        self._ref_mean, self._ref_std = self._reference_moments(ordered)
        self._tau = autocorrelation_time(ordered) if spec.autocorrelation else 1.0
        self._factor = self._bootstrap_factor(ordered) if spec.calibration == "bootstrap" else 1.0
        log.debug(
            "ks_window reference: n=%d mean=%.4g std=%.4g tau=%.3g factor=%.3g",
            ordered.size,
            self._ref_mean,
            self._ref_std,
            self._tau,
            self._factor,
        )

    @staticmethod
    def _quantile_grid(sorted_ref: np.ndarray) -> np.ndarray:
        m = sorted_ref.size
        if m <= _GRID:
            return sorted_ref
        return sorted_ref[((np.arange(_GRID) + 0.5) * (m / _GRID)).astype(np.int64)]

    def _bootstrap_factor(self, ordered: np.ndarray) -> float:
        """Scale of the critical value, fitted to block-bootstrapped windows of the reference.

        Blocks of about twice the autocorrelation time keep the dependence; the factor is
        the ratio of the bootstrap 95th percentile of D to its independent-sample value.
        """
        n = min(self.spec.window, ordered.size // 2)
        m = ordered.size
        block = int(min(n, max(1, math.ceil(2.0 * autocorrelation_time(ordered)))))
        rng = np.random.default_rng(self.seed)
        blocks = math.ceil(n / block)
        offsets = np.arange(block)
        stats = np.empty(_BOOTSTRAP_WINDOWS)
        for b in range(_BOOTSTRAP_WINDOWS):
            starts = rng.integers(0, m, size=blocks)
            idx = ((starts[:, None] + offsets[None, :]) % m).ravel()[:n]
            stats[b] = ks_statistic(np.sort(ordered[idx]), self._grid)
        # A window drawn from the reference shares its values: sqrt(1/n - 1/m), not +.
        independent = math.sqrt(-0.5 * math.log(0.025)) * math.sqrt(max(1.0 / n - 1.0 / m, 1e-12))
        return float(max(1.0, np.quantile(stats, 0.95) / independent))

    def _ranks(self) -> tuple[np.ndarray, np.ndarray]:
        """Grid points ``<=`` and ``<`` each window value, in the window's storage order.

        Only values that arrived since the last call are searched: a value's ranks hold
        while the grid does, which ``_on_reference`` alone changes.
        """
        ring = self._window
        count = ring.count
        grid = self._grid
        fresh = count if self._ranked is None else self._seen - self._ranked
        if fresh >= count:
            spans = [(0, count)]
        elif fresh <= ring.pos:
            spans = [(ring.pos - fresh, ring.pos)]
        else:
            spans = [(ring.size - (fresh - ring.pos), ring.size), (0, ring.pos)]
        for start, stop in spans:
            held = ring.buf[start:stop]
            self._upto[start:stop] = grid.searchsorted(held, "right")
            self._below[start:stop] = grid.searchsorted(held, "left")
        self._ranked = self._seen
        return self._upto[:count], self._below[:count]

    def _test(self) -> tuple[float, float, float, bool]:
        spec = self.spec
        # Moments only: storage order will do (the KS distance reads the cached ranks).
        window = self._window.values()
        n = window.size
        m = self._m
        upto, below = self._ranks()
        statistic = ks_statistic_ranked(upto, below, self._grid.size)
        if self.spec.calibration == "bootstrap":
            critical = ks_critical(self.alpha, n, m) * self._factor
        else:
            critical = ks_critical(self.alpha, n / self._tau, m / self._tau)
        # Centred on the reference mean: no cancellation for features far from zero.
        centred = window - self._ref_mean
        shift = float(centred.sum()) / n
        std = math.sqrt(max(float(centred @ centred) / n - shift * shift, 0.0))
        ref_std = self._ref_std
        if ref_std > 0:
            effect = shift / ref_std
            ratio = std / ref_std
        else:
            effect = 0.0 if shift == 0 else math.copysign(math.inf, shift)
            ratio = 1.0 if std == 0 else math.inf
        spread = max(ratio, 1.0 / ratio) if ratio > 0 else math.inf
        material = abs(effect) >= spec.min_shift or spread >= spec.min_scale_ratio
        return statistic, effect, critical, bool(material and statistic >= critical)

    def _extra_state(self) -> dict[str, Any]:
        return {
            "grid": self._grid,
            "m": self._m,
            "ref": [self._ref_mean, self._ref_std, self._tau, self._factor],
        }

    def _load_extra(self, state: dict[str, Any]) -> None:
        self._grid = state["grid"]
        self._m = int(state["m"])
        self._ranked = None
        self._ref_mean, self._ref_std, self._tau, self._factor = (float(v) for v in state["ref"])


class _RiverNumericDetector(RiverGatedDetector[RiverNumericSpecT]):
    """River numeric detector on values standardized by the reference mean and std (both
    without the values the extreme-value rule clipped, as is every value River sees)."""

    numeric_values = True

    def _materiality(self) -> float:
        return self.spec.min_shift

    def _direction(self) -> Direction:
        return "both"

    def _location_scale(self, values: np.ndarray) -> tuple[float, float]:
        return self._reference_moments(values)

    def _transform(self, chunk: np.ndarray) -> list[Any]:
        scale = self._ref_scale if self._ref_scale > 0 else 1.0
        return list(((chunk - self._ref_mean) / scale).tolist())


class AdwinDetector(_RiverNumericDetector[AdwinSpec]):
    """River ADWIN (``delta`` divided by the family size), gated by ``min_shift``.

    Examples
    --------
    >>> det = AdwinDetector(AdwinSpec(reference={"size": 2000}))
    >>> rng = np.random.default_rng(3)
    >>> det.update_many(rng.normal(size=20_000)).verdict.value
    'ok'
    >>> det.update_many(rng.normal(2.0, 1.0, size=2000)).verdict.value
    'drift'
    """

    spec_class = AdwinSpec

    def _make_river(self) -> Any:
        spec = self.spec
        return drift.ADWIN(  # type: ignore[no-untyped-call]
            delta=spec.delta / self.family_size,
            clock=spec.clock,
            max_buckets=spec.max_buckets,
            min_window_length=spec.min_window_length,
            grace_period=spec.grace_period,
        )


class PageHinkleyDetector(_RiverNumericDetector[PageHinkleySpec]):
    """River Page-Hinkley on standardized values, gated by ``min_shift``.

    The family correction raises the threshold by ``ln(family_size) / delta``: the
    Page-Hinkley statistic grows by about ``delta`` per event under no change, so the
    expected run length to a false alarm grows roughly exponentially with the threshold.
    """

    spec_class = PageHinkleySpec

    def _make_river(self) -> Any:
        spec = self.spec
        extra = math.log(self.family_size) / spec.delta if spec.delta > 0 else 0.0
        return drift.PageHinkley(
            min_instances=spec.min_instances,
            delta=spec.delta,
            threshold=spec.threshold + extra,
            alpha=spec.alpha,
            mode=spec.mode,
        )
