"""The monitoring policy: which signals each model watches, how breaches map to health levels,
and what happens at each level (flags, alerts, review). Validated before the daemon starts.
"""

from __future__ import annotations

import enum
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from detectors.base import InputKind
from detectors.registry import DetectorSpec, default_spec

__all__ = [
    "AutoCoverage",
    "AutoLevels",
    "Duration",
    "Level",
    "LevelActions",
    "ModelPolicy",
    "OutcomePolicy",
    "SignalPolicy",
    "SignalSource",
    "Thresholds",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``30``, ``"30s"``, ``"5m"``, ``"1.5h"``, ``"250ms"``.

    >>> parse_duration("5m"), parse_duration(2), parse_duration("250ms")
    (300.0, 2.0, 0.25)
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {value!r}")
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"expected a non-negative duration, got {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Level(enum.IntEnum):
    """Health levels, ordered by severity."""

    OK = 0
    WARN = 1
    DEGRADED = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Level:
        return cls[name.upper()]


LevelName = Literal["warn", "degraded", "critical"]


class SignalSource(enum.Enum):
    """Which part of an event a signal watches."""

    PREDICTION = "prediction"
    CONFIDENCE = "confidence"
    LATENCY = "latency_ms"
    ERROR = "error"
    FEEDBACK = "feedback"
    #: 1 when a label event's label differs from its prediction.
    LABEL_ERROR = "label_error"
    #: One named feature.
    FEATURE = "feature"
    #: A family of named features, one detector each, corrected for the family's size.
    FEATURES = "features"
    #: Missing-value rate of each listed feature.
    MISSING = "missing"
    #: Multivariate anomaly rate over the listed numeric features.
    ANOMALY = "anomaly"
    #: 1 when an event's features break the schema in ``expect``: a feature not in it, or one
    #: whose value has another kind (a feature that disappears shows in its missing rate).
    SCHEMA = "schema"
    #: A regression's error, ``|label - prediction|`` (``error: relative``: divided by
    #: ``|label|``), of events that carry both or of outcomes joined to their prediction.
    REGRESSION_ERROR = "regression_error"
    #: A classifier's expected correctness without labels (CBPE): the calibrated confidence
    #: of the predicted class (docs/outcomes.md#estimated-accuracy).
    ESTIMATED_ACCURACY = "estimated_accuracy"


_DEFAULT_KIND = {
    SignalSource.PREDICTION: InputKind.NUMERIC,
    SignalSource.CONFIDENCE: InputKind.NUMERIC,
    SignalSource.LATENCY: InputKind.NUMERIC,
    SignalSource.ERROR: InputKind.BINARY,
    SignalSource.FEEDBACK: InputKind.BINARY,
    SignalSource.LABEL_ERROR: InputKind.BINARY,
    SignalSource.FEATURE: InputKind.NUMERIC,
    SignalSource.FEATURES: InputKind.NUMERIC,
    SignalSource.MISSING: InputKind.BINARY,
    SignalSource.ANOMALY: InputKind.MULTIVARIATE,
    SignalSource.SCHEMA: InputKind.BINARY,
    SignalSource.REGRESSION_ERROR: InputKind.NUMERIC,
    SignalSource.ESTIMATED_ACCURACY: InputKind.NUMERIC,
}

_ALLOWED_KINDS = {
    SignalSource.PREDICTION: {InputKind.NUMERIC, InputKind.CATEGORICAL},
    SignalSource.CONFIDENCE: {InputKind.NUMERIC},
    SignalSource.LATENCY: {InputKind.NUMERIC},
    SignalSource.ERROR: {InputKind.BINARY},
    SignalSource.FEEDBACK: {InputKind.BINARY, InputKind.NUMERIC},
    SignalSource.LABEL_ERROR: {InputKind.BINARY},
    SignalSource.FEATURE: {InputKind.NUMERIC, InputKind.CATEGORICAL},
    SignalSource.FEATURES: {InputKind.NUMERIC, InputKind.CATEGORICAL},
    SignalSource.MISSING: {InputKind.BINARY},
    SignalSource.ANOMALY: {InputKind.MULTIVARIATE},
    SignalSource.SCHEMA: {InputKind.BINARY},
    SignalSource.REGRESSION_ERROR: {InputKind.NUMERIC},
    SignalSource.ESTIMATED_ACCURACY: {InputKind.NUMERIC},
}

#: The sources that read ground truth: a model watching one keeps its predictions for the
#: outcome join from its first event (``outcomes.join: auto``).
LABEL_SOURCES = frozenset({SignalSource.LABEL_ERROR, SignalSource.REGRESSION_ERROR})

#: The kinds of a feature's values.
FeatureKind = Literal["numeric", "categorical"]
#: What the ``expect`` of a ``source: schema`` signal allows a feature (``any``: both kinds).
ExpectedKind = Literal["numeric", "categorical", "any"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Thresholds(_Strict):
    """Levels reached when the signal's statistic crosses each boundary."""

    warn: float | None = None
    degraded: float | None = None
    critical: float | None = None
    #: ``above``: breached when the statistic is above the boundary; ``below``: under it.
    direction: Literal["above", "below"] = "above"

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        given = [
            (n, v)
            for n, v in (
                ("warn", self.warn),
                ("degraded", self.degraded),
                ("critical", self.critical),
            )
            if v is not None
        ]
        if not given:
            raise ValueError("set at least one of warn, degraded, critical")
        values = [v for _, v in given]
        ordered = sorted(values) if self.direction == "above" else sorted(values, reverse=True)
        if values != ordered:
            word = "increase" if self.direction == "above" else "decrease"
            raise ValueError(
                f"thresholds must {word} from warn to critical when direction is "
                f"{self.direction!r}, got {dict(given)}"
            )
        return self

    def level_of(self, statistic: float) -> Level:
        """The highest level whose boundary ``statistic`` crosses."""
        if math.isnan(statistic):
            return Level.OK
        above = self.direction == "above"
        for level, bound in (
            (Level.CRITICAL, self.critical),
            (Level.DEGRADED, self.degraded),
            (Level.WARN, self.warn),
        ):
            if bound is not None and (statistic > bound if above else statistic < bound):
                return level
        return Level.OK

    def items(self) -> list[tuple[Level, float]]:
        return [
            (lvl, v)
            for lvl, v in (
                (Level.WARN, self.warn),
                (Level.DEGRADED, self.degraded),
                (Level.CRITICAL, self.critical),
            )
            if v is not None
        ]


class SignalPolicy(_Strict):
    """One watched signal of a model."""

    #: Unique within the model; defaults to the source (plus the feature name).
    name: str | None = Field(default=None, min_length=1, max_length=100)
    source: SignalSource
    #: The feature watched by ``source: feature``.
    feature: str | None = None
    #: The features watched by ``source: features | missing | anomaly``.
    features: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    #: ``source: schema``: every expected feature and the kind of its values.
    expect: dict[str, ExpectedKind] | None = Field(default=None, max_length=1000)
    #: ``source: regression_error``: ``absolute`` (``|label - prediction|``) or ``relative``
    #: (divided by ``|label|``; a label of 0 gives no value).
    error: Literal["absolute", "relative"] | None = None
    #: Detector; the calibrated default for the source's input kind when omitted.
    detector: DetectorSpec | None = None
    #: Absolute thresholds on the detector's statistic; without them a drift or anomaly
    #: verdict of the detector raises ``level``.
    thresholds: Thresholds | None = None
    level: LevelName = "warn"
    #: How long a breach must hold before it counts; the model's ``health.for`` by default.
    for_: Duration | None = Field(default=None, alias="for")
    #: Raise this level when the signal has had no conclusive reading for ``no_data_after``.
    no_data: LevelName | None = None
    no_data_after: Duration = 300.0

    @model_validator(mode="after")
    def _consistent(self) -> SignalPolicy:
        src = self.source
        if src is SignalSource.FEATURE and not self.feature:
            raise ValueError("source 'feature' needs 'feature: <name>'")
        if src is not SignalSource.FEATURE and self.feature is not None:
            raise ValueError(f"'feature' only applies to source 'feature', not {src.value!r}")
        needs_list = {SignalSource.FEATURES, SignalSource.MISSING, SignalSource.ANOMALY}
        if src in needs_list and not self.features:
            raise ValueError(f"source {src.value!r} needs 'features: [<name>, ...]'")
        if src not in needs_list and self.features is not None:
            raise ValueError(f"'features' does not apply to source {src.value!r}")
        if src is SignalSource.SCHEMA and self.expect is None:
            raise ValueError("source 'schema' needs 'expect: {<feature>: numeric|categorical|any}'")
        if src is not SignalSource.SCHEMA and self.expect is not None:
            raise ValueError(f"'expect' only applies to source 'schema', not {src.value!r}")
        if src is not SignalSource.REGRESSION_ERROR and self.error is not None:
            raise ValueError(
                f"'error' only applies to source 'regression_error', not {src.value!r}"
            )
        least = getattr(self.detector_spec, "min_features", 1)
        if self.features is not None and len(self.features) < least:
            raise ValueError(
                f"detector {self.detector_spec.type!r} needs at least {least} features, "
                f"got {len(self.features)}"
            )
        kind = self.input_kind
        if kind not in _ALLOWED_KINDS[src]:
            allowed = ", ".join(sorted(k.value for k in _ALLOWED_KINDS[src]))
            raise ValueError(
                f"detector {self.detector_spec.type!r} reads {kind.value} values; "
                f"source {src.value!r} needs a {allowed} detector"
            )
        return self

    @property
    def detector_spec(self) -> Any:
        spec = (
            self.detector if self.detector is not None else default_spec(_DEFAULT_KIND[self.source])
        )
        thresholds = self.thresholds
        # With absolute thresholds in the policy, a detector that can compare with an absolute
        # limit does so from its first full window: "error rate above 5 %" needs no reference.
        if thresholds is not None and "threshold" in type(spec).model_fields:
            update: dict[str, Any] = {}
            if getattr(spec, "threshold", None) is None:
                update["threshold"] = thresholds.items()[0][1]
            if thresholds.direction == "below" and "alert_on" in type(spec).model_fields:
                update["alert_on"] = "decrease"
            if update:
                spec = spec.model_copy(update=update)
        return spec

    @property
    def input_kind(self) -> InputKind:
        kind: InputKind = self.detector_spec.input_kind
        return kind

    @property
    def signal_name(self) -> str:
        if self.name:
            return str(self.name)
        if self.source is SignalSource.FEATURE:
            return f"feature.{self.feature}"
        return str(self.source.value)


class HealthTiming(_Strict):
    """Hysteresis of the health state machine."""

    #: How long a breach must hold before the state escalates.
    for_: Duration = Field(default=30.0, alias="for")
    #: After a recovery, how long before a new incident of the model may open (anti-flapping);
    #: a breach that still holds then opens it. It never delays a recovery or an escalation.
    cooldown: Duration = 300.0
    #: How long the model must stay healthy before the state steps down and flags are restored
    #: (Prometheus' ``keep_firing_for``).
    recover_after: Duration = 120.0


class AlertAction(_Strict):
    severity: Literal["info", "warning", "page", "critical"] = "warning"
    summary: str | None = None


class ReviewAction(_Strict):
    """Publish a sample of the model's events to the review topic while at this level."""

    sample_rate: float = Field(default=0.05, gt=0.0, le=1.0)
    #: Only events whose confidence is below this value (low-confidence first).
    max_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    #: Hard cap on review events per second per model.
    max_per_second: float = Field(default=10.0, gt=0.0)


class LevelActions(_Strict):
    #: Flags set on entering this level and restored after recovery.
    flags: dict[str, bool | str | int | float] = Field(default_factory=dict)
    alert: AlertAction | None = None
    review: ReviewAction | None = None


def _actions_default() -> dict[LevelName, LevelActions]:
    return {
        "warn": LevelActions(alert=AlertAction(severity="warning")),
        "degraded": LevelActions(alert=AlertAction(severity="page")),
        "critical": LevelActions(alert=AlertAction(severity="critical")),
    }


class AutoLevels(_Strict):
    """The level each family of discovered signals raises (docs/policies.md#auto-coverage):
    a drift of what goes in warns; what users feel (errors, latency, engagement) degrades."""

    features: LevelName = "warn"
    prediction: LevelName = "warn"
    confidence: LevelName = "warn"
    latency: LevelName = "degraded"
    error: LevelName = "degraded"
    engagement: LevelName = "degraded"
    missing: LevelName = "warn"
    # ``schema`` is a pydantic BaseModel attribute: the field keeps its name in the file only.
    schema_: LevelName = Field(default="warn", alias="schema")
    labels: LevelName = "degraded"


class AutoCoverage(_Strict):
    """Signals discovered from a model's first events, with calibrated defaults."""

    #: True: discover; False: only the named signals; unset: discover when none is named.
    enabled: bool | None = None
    #: Events observed before the discovered signals are built. They are not fed to them:
    #: the discovered signals' reference starts filling with the next event (nothing is
    #: buffered, so a checkpoint holds only the schema). Named signals get every event.
    discover_events: int = Field(default=200, ge=1, le=100_000)
    #: Discovery also ends this long after the model's first event (with at least one
    #: event observed): a model with few events still gets its signals.
    discover_within: Duration = Field(default=300.0, gt=0.0, le=86_400.0)
    #: At most this many features are watched (the most frequent first, then by name).
    max_features: int = Field(default=100, ge=0, le=1000)
    #: Discovered signals left unwatched: a signal name (``latency_ms``, ``features``) or a
    #: feature (``feature.<name>``: out of every discovered family).
    ignore: list[str] = Field(default_factory=list, max_length=1000)
    #: A latency SLO: the p99 against it, beside the p99 against the model's own baseline.
    latency_slo_ms: float | None = Field(default=None, gt=0.0, le=1e9)
    levels: AutoLevels = Field(default_factory=AutoLevels)


class OutcomePolicy(_Strict):
    """The join of delayed outcome events to earlier predictions (docs/outcomes.md)."""

    #: ``on``: keep each prediction that has a ``request_id`` from the model's first event;
    #: ``off``: never (outcomes are counted unmatched); ``auto``: on from the first event when
    #: a label signal is named, else from the model's first outcome event.
    join: Literal["auto", "on", "off"] = "auto"
    #: How long a prediction waits for its outcome, on the daemon's clock (not ``ts``).
    horizon: Duration = 86_400.0
    #: Predictions waiting per model; past it the oldest is evicted (and counted).
    max_pending: int = Field(default=20_000, ge=1, le=1_000_000)


def _signals_auto(value: Any) -> Any:
    # ``signals: auto`` is the minimal policy spelled out: no named signal, discovery on.
    return [] if value == "auto" else value


class ModelPolicy(_Strict):
    """What to watch for one model and what to do when its health breaks."""

    #: ``shadow`` runs everything and records what it would have done, touching no flag
    #: and paging nobody.
    mode: Literal["enforce", "shadow"] = "enforce"
    #: Named signals; with none (or ``auto``) the model watches what its events carry.
    signals: Annotated[list[SignalPolicy], BeforeValidator(_signals_auto)] = Field(
        default_factory=list, max_length=200
    )
    auto: AutoCoverage = Field(default_factory=AutoCoverage)
    outcomes: OutcomePolicy = Field(default_factory=OutcomePolicy)
    health: HealthTiming = Field(default_factory=HealthTiming)
    actions: dict[LevelName, LevelActions] = Field(default_factory=_actions_default)
    runbook_url: str = (
        "https://github.com/driftwarden/driftwarden/blob/main/docs/runbooks/ModelUnhealthy.md"
    )

    @property
    def discovers(self) -> bool:
        """Whether signals are discovered from the model's events."""
        enabled = self.auto.enabled
        return not self.signals if enabled is None else enabled

    @field_validator("signals")
    @classmethod
    def _unique_names(cls, signals: list[SignalPolicy]) -> list[SignalPolicy]:
        seen: set[str] = set()
        for signal in signals:
            if signal.signal_name in seen:
                raise ValueError(
                    f"two signals are named {signal.signal_name!r}; give one a distinct 'name'"
                )
            seen.add(signal.signal_name)
        return signals
