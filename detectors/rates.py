"""Rates on binary streams (errors, label-based errors, feedback): a windowed rate against an
absolute threshold or the reference rate, and River's DDM, EDDM, HDDM_A and HDDM_W, gated.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from river.drift import binary

from detectors.base import Verdict
from detectors.calibration import chi2_critical, g_statistic_2x2, normal_isf, normal_sf
from detectors.window import RiverGatedDetector, WindowedDetector, drop_nan

if TYPE_CHECKING:
    from detectors.specs import DDMSpec, EDDMSpec, HDDMASpec, HDDMWSpec, RateWindowSpec

__all__ = [
    "DDMDetector",
    "EDDMDetector",
    "HDDMADetector",
    "HDDMWDetector",
    "RateWindowDetector",
]

log = logging.getLogger(__name__)


def _binary(values: Any) -> np.ndarray:
    """Non-missing values as 0.0 / 1.0 (any non-zero value counts as 1)."""
    arr = drop_nan(np.asarray(values, dtype=np.float64).ravel())
    binary: np.ndarray = (arr != 0.0).astype(np.float64)
    return binary


class RateWindowDetector(WindowedDetector):
    """Share of 1s in the last ``window`` values.

    With ``threshold``, an absolute limit: the verdict is ANOMALY while the window rate is
    above it (below it for ``alert_on: decrease``), and no reference is needed. Without, the
    window is tested against the reference rate with a one-sided likelihood-ratio test at
    the family-corrected alpha, gated by ``min_difference``; the verdict is DRIFT.

    Examples
    --------
    >>> from detectors.specs import RateWindowSpec
    >>> spec = RateWindowSpec(window=1000, reference={"size": 5000})
    >>> det = RateWindowDetector(spec)
    >>> rng = np.random.default_rng(1)
    >>> det.update_many((rng.random(20_000) < 0.01).astype(float)).verdict.value
    'ok'
    >>> stream = (rng.random(2000) < 0.05).astype(float)
    >>> first = next(i for i in range(0, 2000, 100)
    ...              if det.update_many(stream[i:i + 100]).breached)
    >>> first < 1000
    True
    """

    spec: RateWindowSpec

    def __init__(self, spec: Any, *, family_size: int = 1, seed: int = 0) -> None:
        self.absolute = spec.threshold is not None
        super().__init__(spec, family_size=family_size, seed=seed)
        if self.absolute:
            self.breach_verdict = Verdict.ANOMALY

    def _prepare(self, values: Any) -> np.ndarray:
        return _binary(values)

    def _reset_extra(self) -> None:
        self._ones = 0.0
        self._ref_ones = 0.0
        self._ref_n = 0
        if self.absolute:
            # An absolute limit needs no reference: mark it ready so verdicts start at once.
            self._reference.ready = True
            self._reference.mode = "none"

    def _on_push(self, chunk: np.ndarray, evicted: np.ndarray) -> None:
        # Values are 0.0 / 1.0: counting is summing, exactly, and cheaper per call.
        self._ones += float(np.count_nonzero(chunk)) - float(np.count_nonzero(evicted))

    def _on_reference(self) -> None:
        values = self._reference.ring.values()
        self._ref_ones = float(values.sum())
        self._ref_n = int(values.size)

    def _test(self) -> tuple[float, float, float, bool]:
        spec = self.spec
        n = self._window.count
        ones = self._ones
        rate = ones / n
        ref_rate = self._ref_ones / self._ref_n if self._ref_n else math.nan
        effect = rate - ref_rate
        if spec.threshold is not None:
            limit = spec.threshold
            above = rate > limit
            below = rate < limit
            candidate = {"increase": above, "decrease": below, "both": above or below}
            return rate, effect, limit, candidate[spec.alert_on]
        one_sided = spec.alert_on != "both"
        critical = chi2_critical(2.0 * self.alpha if one_sided else self.alpha, 1)
        g = g_statistic_2x2(ones, n - ones, self._ref_ones, self._ref_n - self._ref_ones)
        if spec.alert_on == "increase":
            material = effect >= spec.min_difference
        elif spec.alert_on == "decrease":
            material = -effect >= spec.min_difference
        else:
            material = abs(effect) >= spec.min_difference
        return g, effect, critical, bool(material and g >= critical)

    def _extra_state(self) -> dict[str, Any]:
        return {"ones": self._ones, "ref": [self._ref_ones, self._ref_n]}

    def _load_extra(self, state: dict[str, Any]) -> None:
        self._ones = float(state["ones"])
        self._ref_ones, ref_n = state["ref"]
        self._ref_ones = float(self._ref_ones)
        self._ref_n = int(ref_n)
        if self.absolute:
            self._reference.ready = True
            self._reference.mode = "none"


class _RiverBinaryDetector(RiverGatedDetector):
    """River binary detector; the window rate must differ from the reference by
    ``min_difference`` in the ``alert_on`` direction, River must have fired recently."""

    gate_field = "min_difference"

    def _prepare(self, values: Any) -> np.ndarray:
        return _binary(values)

    def _transform(self, chunk: np.ndarray) -> list[Any]:
        return list((chunk != 0.0).tolist())

    def _standard_error(self, effect: float, n: int) -> float:
        m = self._reference.ring.count
        pooled = (self._ref_mean * m + (self._ref_mean + effect) * n) / (m + n)
        return math.sqrt(max(pooled * (1.0 - pooled), 1e-12) * (1.0 / n + 1.0 / m))


class DDMDetector(_RiverBinaryDetector):
    """River DDM; the drift threshold (in standard deviations) is raised so that its tail
    probability is divided by the family size."""

    spec: DDMSpec

    def _make_river(self) -> Any:
        spec = self.spec
        drift = normal_isf(normal_sf(spec.drift_threshold) / self.family_size)
        warning = min(spec.warning_threshold, drift)
        return binary.DDM(
            warm_start=spec.warm_start, warning_threshold=warning, drift_threshold=drift
        )


class EDDMDetector(_RiverBinaryDetector):
    """River EDDM (distance between errors), gated."""

    spec: EDDMSpec

    def _make_river(self) -> Any:
        spec = self.spec
        return binary.EDDM(warm_start=spec.warm_start, alpha=spec.alpha, beta=spec.beta)


class HDDMADetector(_RiverBinaryDetector):
    """River HDDM_A; ``drift_confidence`` is divided by the family size."""

    spec: HDDMASpec

    def _make_river(self) -> Any:
        spec = self.spec
        drift = spec.drift_confidence / self.family_size
        return binary.HDDMA(  # type: ignore[no-untyped-call]
            drift_confidence=drift,
            warning_confidence=max(spec.warning_confidence, drift),
            two_sided_test=spec.two_sided_test,
        )


class HDDMWDetector(_RiverBinaryDetector):
    """River HDDM_W; ``drift_confidence`` is divided by the family size."""

    spec: HDDMWSpec

    def _make_river(self) -> Any:
        spec = self.spec
        drift = spec.drift_confidence / self.family_size
        return binary.HDDMW(  # type: ignore[no-untyped-call]
            drift_confidence=drift,
            warning_confidence=max(spec.warning_confidence, drift),
            lambda_val=spec.lambda_val,
            two_sided_test=spec.two_sided_test,
        )
