"""Rates on binary streams (errors, label-based errors, feedback): a windowed rate against an
absolute threshold or the reference rate, and River's DDM, EDDM, HDDM_A and HDDM_W, gated.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, TypeVar

import numpy as np
from pydantic import Field, model_validator
from river.drift import binary

from detectors.base import BaseDetector, InputKind, Verdict
from detectors.calibration import chi2_critical, g_statistic_2x2, normal_isf, normal_sf
from detectors.window import Direction, RiverGatedDetector, WindowedDetector, WindowSpec, drop_nan

__all__ = [
    "DDMDetector",
    "DDMSpec",
    "EDDMDetector",
    "EDDMSpec",
    "HDDMADetector",
    "HDDMASpec",
    "HDDMWDetector",
    "HDDMWSpec",
    "RateLimitDetector",
    "RateSpec",
    "RateWindowDetector",
    "RateWindowSpec",
    "ThresholdRateSpec",
    "WindowRateDetector",
    "WindowRateLimitDetector",
]

log = logging.getLogger(__name__)


class RateSpec(WindowSpec):
    """Fields shared by the detectors of binary streams."""

    input_kind: ClassVar[InputKind] = InputKind.BINARY
    #: Materiality: the window rate must differ from the reference rate by this much.
    min_difference: float = Field(default=0.01, ge=0.0, le=1.0)
    alert_on: Direction = "increase"


class ThresholdRateSpec(RateSpec):
    """A windowed rate against an absolute ``threshold``, or the reference rate without."""

    if TYPE_CHECKING:
        # Each subclass declares the field itself: declared here it would come before the
        # subclass's ``type`` in the spec's JSON, whose hash a checkpoint keeps.
        threshold: float | None


class RateWindowSpec(ThresholdRateSpec):
    """Rate of 1s in a window: against ``threshold`` (absolute) or else the reference rate."""

    type: Literal["rate_window"] = "rate_window"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class RiverBinarySpec(RateSpec):
    window: int = Field(default=500, ge=10, le=1_000_000)


class DDMSpec(RiverBinarySpec):
    """River DDM; ``drift_threshold`` (in standard deviations) is raised for the family."""

    type: Literal["ddm"] = "ddm"
    warm_start: int = Field(default=30, ge=1, le=1_000_000)
    warning_threshold: float = Field(default=2.0, gt=0.0, le=100.0)
    drift_threshold: float = Field(default=3.0, gt=0.0, le=100.0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.warning_threshold > self.drift_threshold:
            raise ValueError("warning_threshold must not exceed drift_threshold")
        return self


class EDDMSpec(RiverBinarySpec):
    """River EDDM (distance between errors)."""

    type: Literal["eddm"] = "eddm"
    warm_start: int = Field(default=30, ge=1, le=1_000_000)
    alpha: float = Field(default=0.95, gt=0.0, lt=1.0)
    beta: float = Field(default=0.9, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.beta >= self.alpha:
            raise ValueError(
                f"beta must be smaller than alpha (beta={self.beta}, alpha={self.alpha})"
            )
        return self


class HDDMASpec(RiverBinarySpec):
    """River HDDM_A (Hoeffding bound on averages); ``drift_confidence`` / family size."""

    type: Literal["hddm_a"] = "hddm_a"
    drift_confidence: float = Field(default=1e-3, gt=0.0, lt=1.0)
    warning_confidence: float = Field(default=5e-3, gt=0.0, lt=1.0)
    two_sided_test: bool = False


class HDDMWSpec(RiverBinarySpec):
    """River HDDM_W (Hoeffding bound on weighted averages); ``drift_confidence`` / family."""

    type: Literal["hddm_w"] = "hddm_w"
    drift_confidence: float = Field(default=1e-3, gt=0.0, lt=1.0)
    warning_confidence: float = Field(default=5e-3, gt=0.0, lt=1.0)
    lambda_val: float = Field(default=0.05, gt=0.0, lt=1.0)
    two_sided_test: bool = False


ThresholdRateSpecT = TypeVar("ThresholdRateSpecT", bound=ThresholdRateSpec)
RiverBinarySpecT = TypeVar("RiverBinarySpecT", bound=RiverBinarySpec)


def _binary(values: Any) -> np.ndarray:
    """Non-missing values as 0.0 / 1.0 (any non-zero value counts as 1)."""
    arr = drop_nan(np.asarray(values, dtype=np.float64).ravel())
    binary: np.ndarray = (arr != 0.0).astype(np.float64)
    return binary


class WindowRateDetector(WindowedDetector[ThresholdRateSpecT]):
    """Share of 1s in the last ``window`` values, tested against the reference rate with a
    one-sided likelihood-ratio test at the family-corrected alpha, gated by
    ``min_difference``; the verdict is DRIFT. A spec with a ``threshold`` runs the
    ``WindowRateLimitDetector`` variant instead (:meth:`variant_for`)."""

    #: A fixed reference fills as 0 / 1 bytes, not float64: only its count of 1s is read
    #: (``_on_reference``), the same whole number either way; 10 KB a reference, not 78.
    reference_dtype = np.uint8

    def __init__(self, spec: ThresholdRateSpecT, *, family_size: int = 1, seed: int = 0) -> None:
        if (spec.threshold is not None) is not self.absolute_limit:
            raise ValueError(
                f"{type(self).__name__} takes a {spec.type} spec "
                f"{'with' if self.absolute_limit else 'without'} a threshold "
                "(detectors.build_detector picks the class)"
            )
        super().__init__(spec, family_size=family_size, seed=seed)

    def _prepare(self, values: Any) -> np.ndarray:
        return _binary(values)

    def _reset_extra(self) -> None:
        self._ones = 0.0
        self._ref_ones = 0.0
        self._ref_n = 0

    def _on_push(self, chunk: np.ndarray, evicted: np.ndarray) -> None:
        # Values are 0.0 / 1.0: counting is summing, exactly, and cheaper per call.
        self._ones += float(np.count_nonzero(chunk)) - float(np.count_nonzero(evicted))

    def _on_reference(self) -> None:
        values = self._reference.ring.values()
        self._ref_ones = float(values.sum())
        self._ref_n = int(values.size)

    def _rates(self) -> tuple[float, float]:
        """The window's rate and its difference from the reference's (NaN without one)."""
        rate = self._ones / self._window.count
        ref_rate = self._ref_ones / self._ref_n if self._ref_n else math.nan
        return rate, rate - ref_rate

    def _test(self) -> tuple[float, float, float, bool]:
        spec = self.spec
        n = self._window.count
        ones = self._ones
        _, effect = self._rates()
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


class WindowRateLimitDetector(WindowRateDetector[ThresholdRateSpecT]):
    """The window rate against the absolute ``threshold``: ANOMALY while it is above it
    (below it for ``alert_on: decrease``); no reference is kept, verdicts start at once."""

    absolute_limit = True
    breach_verdict = Verdict.ANOMALY

    def _test(self) -> tuple[float, float, float, bool]:
        spec = self.spec
        rate, effect = self._rates()
        limit = spec.threshold
        assert limit is not None  # checked in __init__
        above = rate > limit
        below = rate < limit
        candidate = {"increase": above, "decrease": below, "both": above or below}
        return rate, effect, limit, candidate[spec.alert_on]


class RateWindowDetector(WindowRateDetector[RateWindowSpec]):
    """Share of 1s in the last ``window`` values.

    With ``threshold``, an absolute limit: the verdict is ANOMALY while the window rate is
    above it (below it for ``alert_on: decrease``), and no reference is needed
    (:class:`RateLimitDetector`). Without, the window is tested against the reference rate
    with a one-sided likelihood-ratio test at the family-corrected alpha, gated by
    ``min_difference``; the verdict is DRIFT.

    Examples
    --------
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
    >>> RateWindowDetector.variant_for(RateWindowSpec(threshold=0.1)).__name__
    'RateLimitDetector'
    """

    spec_class = RateWindowSpec

    @classmethod
    def variant_for(cls, spec: RateWindowSpec) -> type[BaseDetector[RateWindowSpec]]:
        return RateLimitDetector if spec.threshold is not None else cls


class RateLimitDetector(WindowRateLimitDetector[RateWindowSpec]):
    """``rate_window`` with a ``threshold``: the window rate against that absolute limit."""

    spec_class = RateWindowSpec


class _RiverBinaryDetector(RiverGatedDetector[RiverBinarySpecT]):
    """River binary detector; the window rate must differ from the reference by
    ``min_difference`` in the ``alert_on`` direction, River must have fired recently."""

    def _materiality(self) -> float:
        return self.spec.min_difference

    def _direction(self) -> Direction:
        return self.spec.alert_on

    def _prepare(self, values: Any) -> np.ndarray:
        return _binary(values)

    def _transform(self, chunk: np.ndarray) -> list[Any]:
        return list((chunk != 0.0).tolist())

    def _standard_error(self, effect: float, n: int) -> float:
        m = self._reference.ring.count
        pooled = (self._ref_mean * m + (self._ref_mean + effect) * n) / (m + n)
        return math.sqrt(max(pooled * (1.0 - pooled), 1e-12) * (1.0 / n + 1.0 / m))


class DDMDetector(_RiverBinaryDetector[DDMSpec]):
    """River DDM; the drift threshold (in standard deviations) is raised so that its tail
    probability is divided by the family size."""

    spec_class = DDMSpec

    def _make_river(self) -> Any:
        spec = self.spec
        drift = normal_isf(normal_sf(spec.drift_threshold) / self.family_size)
        warning = min(spec.warning_threshold, drift)
        return binary.DDM(
            warm_start=spec.warm_start, warning_threshold=warning, drift_threshold=drift
        )


class EDDMDetector(_RiverBinaryDetector[EDDMSpec]):
    """River EDDM (distance between errors), gated."""

    spec_class = EDDMSpec

    def _make_river(self) -> Any:
        spec = self.spec
        return binary.EDDM(warm_start=spec.warm_start, alpha=spec.alpha, beta=spec.beta)


class HDDMADetector(_RiverBinaryDetector[HDDMASpec]):
    """River HDDM_A; ``drift_confidence`` is divided by the family size."""

    spec_class = HDDMASpec

    def _make_river(self) -> Any:
        spec = self.spec
        drift = spec.drift_confidence / self.family_size
        return binary.HDDMA(  # type: ignore[no-untyped-call]
            drift_confidence=drift,
            warning_confidence=max(spec.warning_confidence, drift),
            two_sided_test=spec.two_sided_test,
        )


class HDDMWDetector(_RiverBinaryDetector[HDDMWSpec]):
    """River HDDM_W; ``drift_confidence`` is divided by the family size."""

    spec_class = HDDMWSpec

    def _make_river(self) -> Any:
        spec = self.spec
        drift = spec.drift_confidence / self.family_size
        return binary.HDDMW(  # type: ignore[no-untyped-call]
            drift_confidence=drift,
            warning_confidence=max(spec.warning_confidence, drift),
            lambda_val=spec.lambda_val,
            two_sided_test=spec.two_sided_test,
        )
