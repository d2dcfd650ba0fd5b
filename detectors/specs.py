"""Detector specs: the ``detector:`` block of a policy, validated, with safe defaults.

One pydantic model per detector type, discriminated by ``type``; ``build_detector`` turns a
spec into a live detector, ``restore_detector`` rebuilds one from its checkpoint bytes.
"""

from __future__ import annotations

import enum
import logging
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from detectors.base import STATE_VERSION, BaseDetector, Detector
from detectors.serialization import StateError, unpack

__all__ = [
    "AdwinSpec",
    "DDMSpec",
    "DetectorSpec",
    "EDDMSpec",
    "HDDMASpec",
    "HDDMWSpec",
    "HalfSpaceTreesSpec",
    "InputKind",
    "JensenShannonSpec",
    "KSWindowSpec",
    "MissingRateSpec",
    "PSISpec",
    "PageHinkleySpec",
    "QuantileSpec",
    "RateWindowSpec",
    "ReferenceSpec",
    "UnseenRateSpec",
    "build_detector",
    "default_spec",
    "restore_detector",
]

log = logging.getLogger(__name__)


class InputKind(enum.Enum):
    """What a detector reads: the daemon feeds each kind in its own container."""

    #: ``numpy.ndarray`` of float64, NaN = missing.
    NUMERIC = "numeric"
    #: ``list[str]``, None = missing.
    CATEGORICAL = "categorical"
    #: ``numpy.ndarray`` of float64 holding 0.0 / 1.0, NaN = missing.
    BINARY = "binary"
    #: 2-D ``numpy.ndarray`` of float64, shape (n, d).
    MULTIVARIATE = "multivariate"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReferenceSpec(_Strict):
    """What a window is compared with.

    ``fixed``: the first ``size`` events (or the values in ``path``, one per line, or a ``.npy``
    array); ``rolling``: the ``size`` events just before the current window, so slow trends
    are followed instead of flagged.
    """

    mode: Literal["fixed", "rolling"] = "fixed"
    size: int = Field(default=10_000, ge=50, le=1_000_000)
    path: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _path_only_when_fixed(self) -> Self:
        if self.path is not None and self.mode != "fixed":
            raise ValueError(f"reference.path needs mode 'fixed', not {self.mode!r}")
        return self


class _Windowed(_Strict):
    """Fields shared by every windowed, reference-based detector."""

    #: Events in the current window the verdict rests on.
    window: int = Field(default=1000, ge=10, le=1_000_000)
    #: No verdict before the window holds this many (non-missing) values.
    min_samples: int = Field(default=200, ge=1, le=1_000_000)
    #: Test once every ``stride`` events (bounds the cost and the number of tests).
    stride: int = Field(default=100, ge=1, le=100_000)
    #: Events a breach must hold, test after test, before the verdict turns.
    persist: int = Field(default=200, ge=0, le=10_000_000)
    #: Target expected events between false alarms, for the whole family of signals.
    false_alarm_every: float = Field(default=10_000_000.0, ge=1_000.0, le=1e15)
    reference: ReferenceSpec = ReferenceSpec()

    @model_validator(mode="after")
    def _window_sizes(self) -> Self:
        if self.min_samples > self.window:
            raise ValueError(
                f"window must be larger than min_samples (window={self.window}, "
                f"min_samples={self.min_samples})"
            )
        if self.stride > self.window:
            raise ValueError(
                f"stride must not exceed window (stride={self.stride}, window={self.window})"
            )
        return self


class KSWindowSpec(_Windowed):
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


class _RiverNumeric(_Windowed):
    """River drift detectors on standardized values, gated by a material shift of the mean."""

    input_kind: ClassVar[InputKind] = InputKind.NUMERIC
    window: int = Field(default=500, ge=10, le=1_000_000)
    min_shift: float = Field(default=0.25, ge=0.0, le=100.0)


class AdwinSpec(_RiverNumeric):
    """River ADWIN; ``delta`` is divided by the family size."""

    type: Literal["adwin"] = "adwin"
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0)
    clock: int = Field(default=32, ge=1, le=10_000)
    max_buckets: int = Field(default=5, ge=2, le=100)
    min_window_length: int = Field(default=5, ge=1, le=100_000)
    grace_period: int = Field(default=10, ge=1, le=1_000_000)


class PageHinkleySpec(_RiverNumeric):
    """River Page-Hinkley on values standardized by the reference (delta, threshold in std)."""

    type: Literal["page_hinkley"] = "page_hinkley"
    min_instances: int = Field(default=30, ge=1, le=1_000_000)
    delta: float = Field(default=0.1, ge=0.0, le=100.0)
    threshold: float = Field(default=50.0, gt=0.0, le=1e9)
    alpha: float = Field(default=0.9999, gt=0.0, le=1.0)
    mode: Literal["up", "down", "both"] = "both"


class _Categorical(_Windowed):
    input_kind: ClassVar[InputKind] = InputKind.CATEGORICAL
    #: Categories tracked; rarer ones share one "other" bucket (bounds memory).
    max_categories: int = Field(default=100, ge=2, le=10_000)


class PSISpec(_Categorical):
    """Population stability index of the window against the reference."""

    type: Literal["psi"] = "psi"
    threshold: float = Field(default=0.2, gt=0.0, le=100.0)
    #: Floor of a bucket's share, so an empty bucket does not make PSI infinite.
    epsilon: float = Field(default=1e-4, gt=0.0, lt=0.1)


class JensenShannonSpec(_Categorical):
    """Jensen-Shannon divergence (base 2, in [0, 1]) of the window against the reference."""

    type: Literal["jensen_shannon"] = "jensen_shannon"
    threshold: float = Field(default=0.05, gt=0.0, le=1.0)


class UnseenRateSpec(_Categorical):
    """Share of window values whose category never appeared in the reference."""

    type: Literal["unseen_rate"] = "unseen_rate"
    max_categories: int = Field(default=1000, ge=2, le=100_000)
    threshold: float = Field(default=0.01, ge=0.0, lt=1.0)


class _Rate(_Windowed):
    input_kind: ClassVar[InputKind] = InputKind.BINARY
    #: Materiality: the window rate must differ from the reference rate by this much.
    min_difference: float = Field(default=0.01, ge=0.0, le=1.0)
    alert_on: Literal["increase", "decrease", "both"] = "increase"


class RateWindowSpec(_Rate):
    """Rate of 1s in a window: against ``threshold`` (absolute) or else the reference rate."""

    type: Literal["rate_window"] = "rate_window"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class MissingRateSpec(_Rate):
    """Missing-value rate of one feature (input 1.0 = missing), like ``rate_window``."""

    type: Literal["missing_rate"] = "missing_rate"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    min_difference: float = Field(default=0.02, ge=0.0, le=1.0)


class _RiverBinary(_Rate):
    window: int = Field(default=500, ge=10, le=1_000_000)


class DDMSpec(_RiverBinary):
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


class EDDMSpec(_RiverBinary):
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


class HDDMASpec(_RiverBinary):
    """River HDDM_A (Hoeffding bound on averages); ``drift_confidence`` / family size."""

    type: Literal["hddm_a"] = "hddm_a"
    drift_confidence: float = Field(default=1e-3, gt=0.0, lt=1.0)
    warning_confidence: float = Field(default=5e-3, gt=0.0, lt=1.0)
    two_sided_test: bool = False


class HDDMWSpec(_RiverBinary):
    """River HDDM_W (Hoeffding bound on weighted averages); ``drift_confidence`` / family."""

    type: Literal["hddm_w"] = "hddm_w"
    drift_confidence: float = Field(default=1e-3, gt=0.0, lt=1.0)
    warning_confidence: float = Field(default=5e-3, gt=0.0, lt=1.0)
    lambda_val: float = Field(default=0.05, gt=0.0, lt=1.0)
    two_sided_test: bool = False


class QuantileSpec(_Windowed):
    """A window quantile (p50 / p95 / p99) against an absolute SLO or the reference's."""

    input_kind: ClassVar[InputKind] = InputKind.NUMERIC
    type: Literal["quantile"] = "quantile"
    q: float = Field(default=0.99, gt=0.0, lt=1.0)
    #: Absolute limit (e.g. milliseconds); breached when the window quantile exceeds it.
    threshold: float | None = None
    #: Without ``threshold``: breached when the window quantile exceeds this multiple of the
    #: reference quantile, and more values than chance allows lie above that limit.
    max_ratio: float = Field(default=1.5, gt=1.0, le=1e6)


class HalfSpaceTreesSpec(_Windowed):
    """River HalfSpaceTrees on inputs scaled online to [0, 1], as an anomaly rate over a window."""

    input_kind: ClassVar[InputKind] = InputKind.MULTIVARIATE
    type: Literal["half_space_trees"] = "half_space_trees"
    n_trees: int = Field(default=10, ge=1, le=100)
    height: int = Field(default=8, ge=1, le=16)
    #: River's own mass window (events per tree refresh).
    tree_window: int = Field(default=250, ge=10, le=100_000)
    #: An event is anomalous when its score exceeds this quantile of the reference's scores.
    score_quantile: float = Field(default=0.99, gt=0.5, lt=1.0)
    #: Materiality: the anomaly rate must exceed the reference's by this much.
    min_difference: float = Field(default=0.05, ge=0.0, le=1.0)
    reference: ReferenceSpec = ReferenceSpec(size=2000)
    max_features: int = Field(default=100, ge=1, le=1000)


DetectorSpec = Annotated[
    AdwinSpec
    | PageHinkleySpec
    | KSWindowSpec
    | PSISpec
    | JensenShannonSpec
    | UnseenRateSpec
    | DDMSpec
    | EDDMSpec
    | HDDMASpec
    | HDDMWSpec
    | RateWindowSpec
    | QuantileSpec
    | MissingRateSpec
    | HalfSpaceTreesSpec,
    Field(discriminator="type"),
]

_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(DetectorSpec)


def parse_spec(raw: Any) -> Any:
    """Validate a ``detector:`` mapping (raises pydantic's ``ValidationError``).

    >>> parse_spec({"type": "rate_window", "window": 500}).window
    500
    """
    return _SPEC_ADAPTER.validate_python(raw)


def default_spec(kind: InputKind) -> Any:
    """The calibrated default detector for an input kind.

    >>> default_spec(InputKind.NUMERIC).type
    'ks_window'
    """
    defaults: dict[InputKind, BaseModel] = {
        InputKind.NUMERIC: KSWindowSpec(),
        InputKind.CATEGORICAL: PSISpec(),
        InputKind.BINARY: RateWindowSpec(),
        InputKind.MULTIVARIATE: HalfSpaceTreesSpec(),
    }
    return defaults[kind]


def _detector_class(spec: BaseModel) -> type[BaseDetector]:
    # Imported here: the detector modules import this module's specs.
    from detectors import categorical, missing, multivariate, numeric, quantile, rates

    classes: dict[type[BaseModel], type[BaseDetector]] = {
        AdwinSpec: numeric.AdwinDetector,
        PageHinkleySpec: numeric.PageHinkleyDetector,
        KSWindowSpec: numeric.KSWindowDetector,
        PSISpec: categorical.PSIDetector,
        JensenShannonSpec: categorical.JensenShannonDetector,
        UnseenRateSpec: categorical.UnseenRateDetector,
        DDMSpec: rates.DDMDetector,
        EDDMSpec: rates.EDDMDetector,
        HDDMASpec: rates.HDDMADetector,
        HDDMWSpec: rates.HDDMWDetector,
        RateWindowSpec: rates.RateWindowDetector,
        QuantileSpec: quantile.QuantileDetector,
        MissingRateSpec: missing.MissingRateDetector,
        HalfSpaceTreesSpec: multivariate.HalfSpaceTreesDetector,
    }
    try:
        return classes[type(spec)]
    except KeyError:
        raise TypeError(f"not a detector spec: {spec!r}") from None


def build_detector(spec: Any, *, family_size: int = 1, seed: int = 0) -> Detector:
    """A fresh detector for ``spec``, corrected for ``family_size`` signals of one family.

    >>> import numpy as np
    >>> det = build_detector(RateWindowSpec(threshold=0.1, window=100, min_samples=50, stride=10))
    >>> det.update_many(np.zeros(100)).verdict.value
    'ok'
    """
    detector: Detector = _detector_class(spec)(spec, family_size=family_size, seed=seed)
    return detector


def restore_detector(data: bytes) -> Detector:
    """Rebuild a detector, of any type, from ``detector.to_bytes()``."""
    raw = unpack(data)
    if raw.get("v") != STATE_VERSION:
        raise StateError(f"detector state version {raw.get('v')!r}, expected {STATE_VERSION}")
    try:
        spec = parse_spec(raw["spec"])
    except (ValidationError, KeyError) as err:
        raise StateError(f"detector state holds an invalid spec: {err}") from err
    detector = _detector_class(spec)(
        spec, family_size=int(raw["family_size"]), seed=int(raw["seed"])
    )
    detector._load(raw["state"])
    detector._load_last(raw["last"])
    return detector
