"""Auto coverage: what a model's events carry (:class:`ObservedSchema`, from its first
events) and what its policy then watches (:func:`coverage`): every discovered signal with its
calibrated default detector and documented level, overridden or added to by the named ones.

Pure: no I/O, no clock. The engine observes a model's first ``auto.discover_events`` events,
then builds the model's signals from :func:`resolved`; ``driftwarden explain`` prints
:func:`coverage` for a file of events; a checkpoint keeps the schema, so a restarted or moved
model watches the same signals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from monitor.config.policy import (
    FeatureKind,
    LevelName,
    ModelPolicy,
    SignalPolicy,
    SignalSource,
)
from monitor.engine.events import Event

__all__ = [
    "MAX_TRACKED_FEATURES",
    "CoveredSignal",
    "FieldSeen",
    "ObservedSchema",
    "coverage",
    "outcome_coverage",
    "resolved",
]

#: Feature names an observed schema keeps count of; more are counted in ``overflow`` only
#: (an event may carry 1,000 features, a model's events together any number of names).
MAX_TRACKED_FEATURES = 2_000

#: The top-level members of the event contract that discovery looks at.
TOP_FIELDS = ("prediction", "confidence", "latency_ms", "error", "feedback", "label", "request_id")

Origin = Literal["discovered", "named", "overridden"]


@dataclass(slots=True)
class FieldSeen:
    """How often one field was present in the observed events, by the kind of its value."""

    numeric: int = 0
    categorical: int = 0
    #: Distinct numeric values, up to a few: tells a 0/1 rate from a numeric distribution.
    values: set[float] = field(default_factory=set)

    @property
    def present(self) -> int:
        return self.numeric + self.categorical

    @property
    def kind(self) -> FeatureKind | None:
        """The kind of most of its values (numbers win a tie); None when never present."""
        if not self.present:
            return None
        return "numeric" if self.numeric >= self.categorical else "categorical"

    @property
    def binary(self) -> bool:
        """Every numeric value seen was 0 or 1."""
        return self.numeric > 0 and self.values <= {0.0, 1.0}

    def count(self, value: object) -> None:
        if isinstance(value, bool):
            # A boolean feature is a category (``true`` / ``false``), not a 0 / 1 number whose
            # distribution a KS test would misread (two values, all ties).
            self.categorical += 1
        elif isinstance(value, int | float):
            self.numeric += 1
            if len(self.values) < 3:
                self.values.add(float(value))
        else:
            self.categorical += 1

    def to_json(self) -> list[Any]:
        return [self.numeric, self.categorical, sorted(self.values)]

    @classmethod
    def from_json(cls, raw: list[Any]) -> FieldSeen:
        numeric, categorical, values = raw
        return cls(int(numeric), int(categorical), {float(v) for v in values})


@dataclass(slots=True)
class ObservedSchema:
    """What a model's events carried: each top-level field and feature, by kind."""

    events: int = 0
    fields: dict[str, FieldSeen] = field(default_factory=dict)
    features: dict[str, FieldSeen] = field(default_factory=dict)
    #: Feature values seen under names past :data:`MAX_TRACKED_FEATURES`.
    overflow: int = 0
    #: Events carrying a label and no prediction: outcomes arriving on their own.
    outcomes: int = 0

    def observe(self, events: Iterable[Event]) -> None:
        fields = self.fields
        features = self.features
        for event in events:
            self.events += 1
            for name in TOP_FIELDS:
                value = getattr(event, name)
                if value is not None:
                    seen = fields.get(name)
                    if seen is None:
                        seen = fields[name] = FieldSeen()
                    seen.count(value)
            if event.label is not None and event.prediction is None:
                self.outcomes += 1
            if not event.features:
                continue
            for name, value in event.features.items():
                if value is None:
                    continue
                seen = features.get(name)
                if seen is None:
                    if len(features) >= MAX_TRACKED_FEATURES:
                        self.overflow += 1
                        continue
                    seen = features[name] = FieldSeen()
                seen.count(value)

    def kind(self, name: str) -> FeatureKind | None:
        seen = self.fields.get(name)
        return None if seen is None else seen.kind

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "fields": {k: v.to_json() for k, v in self.fields.items()},
            "features": {k: v.to_json() for k, v in self.features.items()},
            "overflow": self.overflow,
            "outcomes": self.outcomes,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ObservedSchema:
        return cls(
            events=int(raw["events"]),
            fields={k: FieldSeen.from_json(v) for k, v in raw["fields"].items()},
            features={k: FieldSeen.from_json(v) for k, v in raw["features"].items()},
            overflow=int(raw.get("overflow", 0)),
            outcomes=int(raw.get("outcomes", 0)),
        )


@dataclass(frozen=True, slots=True)
class CoveredSignal:
    """One signal a model watches, where it comes from and why."""

    policy: SignalPolicy
    origin: Origin
    reason: str

    @property
    def name(self) -> str:
        return self.policy.signal_name

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "origin": self.origin,
            "reason": self.reason,
            "source": self.policy.source.value,
            "detector": self.policy.detector_spec.type,
            "level": self.policy.level,
            "features": self.policy.features,
        }


def _share(seen: FieldSeen, events: int) -> str:
    return f"in {seen.present}/{events} events"


def _discovered(policy: ModelPolicy, schema: ObservedSchema) -> list[CoveredSignal]:
    """Every signal the schema supports, with the auto defaults, before ignores and names."""
    auto = policy.auto
    levels = auto.levels
    n = schema.events
    found: list[CoveredSignal] = []

    def add(reason: str, level: LevelName, **fields: Any) -> None:
        found.append(CoveredSignal(SignalPolicy(level=level, **fields), "discovered", reason))

    ignored_features = {i.removeprefix("feature.") for i in auto.ignore if i.startswith("feature.")}
    named_features = _features_named(policy.signals)
    watched = [
        (name, seen)
        for name, seen in schema.features.items()
        if name not in ignored_features and seen.kind is not None
    ]
    # The most frequent first, then by name: a bound that keeps the same features every time.
    watched.sort(key=lambda item: (-item[1].present, item[0]))
    beyond = watched[auto.max_features :]
    watched = watched[: auto.max_features]
    cut = (
        f"; {len(beyond)} more beyond auto.max_features={auto.max_features} left unwatched "
        f"({', '.join(name for name, _ in beyond[:5])}{', ...' if len(beyond) > 5 else ''})"
        if beyond
        else ""
    )
    numeric = [name for name, seen in watched if seen.kind == "numeric"]
    categorical = [name for name, seen in watched if seen.kind == "categorical"]
    drift_numeric = [f for f in numeric if f not in named_features]
    drift_categorical = [f for f in categorical if f not in named_features]
    if drift_numeric:
        add(
            f"{len(drift_numeric)} numeric features in the first {n} events{cut}",
            levels.features,
            name="features",
            source=SignalSource.FEATURES,
            features=drift_numeric,
        )
    if drift_categorical:
        add(
            f"{len(drift_categorical)} categorical features in the first {n} events{cut}",
            levels.features,
            name="categories",
            source=SignalSource.FEATURES,
            features=drift_categorical,
            detector={"type": "psi"},
        )
    if watched:
        add(
            f"missing rate of the {len(watched)} watched features",
            levels.missing,
            name="missing",
            source=SignalSource.MISSING,
            features=[name for name, _ in watched],
            detector={"type": "missing_rate"},
        )
        add(
            f"the features and kinds of the first {n} events: one that appears or changes kind",
            levels.schema_,
            name="schema",
            source=SignalSource.SCHEMA,
            expect={name: seen.kind for name, seen in watched if seen.kind is not None},
            detector={"type": "rate_window", "threshold": 0.05},
        )
    prediction = schema.fields.get("prediction")
    if prediction is not None and prediction.kind is not None:
        add(
            f"{prediction.kind} prediction {_share(prediction, n)}",
            levels.prediction,
            name="prediction",
            source=SignalSource.PREDICTION,
            **({"detector": {"type": "psi"}} if prediction.kind == "categorical" else {}),
        )
    confidence = schema.fields.get("confidence")
    if confidence is not None and confidence.numeric:
        add(
            f"confidence {_share(confidence, n)}",
            levels.confidence,
            name="confidence",
            source=SignalSource.CONFIDENCE,
        )
    latency = schema.fields.get("latency_ms")
    if latency is not None and latency.numeric:
        add(
            f"latency_ms {_share(latency, n)}: p99 against the model's own baseline",
            levels.latency,
            name="latency_ms",
            source=SignalSource.LATENCY,
            detector={"type": "quantile", "q": 0.99},
        )
        if auto.latency_slo_ms is not None:
            add(
                f"latency_ms {_share(latency, n)}: p99 against auto.latency_slo_ms",
                levels.latency,
                name="latency_slo",
                source=SignalSource.LATENCY,
                detector={"type": "quantile", "q": 0.99},
                thresholds={levels.latency: auto.latency_slo_ms},
            )
    # Every inference event says whether it failed (absent: it succeeded), so the error rate
    # is watched for any model that sends inference events at all.
    if n > schema.outcomes:
        error = schema.fields.get("error")
        add(
            "error rate (an event without `error` succeeded)"
            + ("" if error is None else f"; `error` {_share(error, n)}"),
            levels.error,
            name="error",
            source=SignalSource.ERROR,
        )
    feedback = schema.fields.get("feedback")
    if feedback is not None and feedback.numeric:
        if feedback.binary:
            add(
                f"engagement: feedback 0/1 {_share(feedback, n)}, a fall",
                levels.engagement,
                name="engagement",
                source=SignalSource.FEEDBACK,
                detector={"type": "rate_window", "alert_on": "decrease"},
            )
        else:
            add(
                f"engagement: numeric feedback {_share(feedback, n)}",
                levels.engagement,
                name="engagement",
                source=SignalSource.FEEDBACK,
                detector={"type": "ks_window"},
            )
    found += _outcome_signals(policy, schema)
    return found


def _outcome_signals(policy: ModelPolicy, schema: ObservedSchema) -> list[CoveredSignal]:
    """The signals of ground truth: the label's error (a class: its rate; a regression's
    numeric label and prediction: the absolute error against the model's own baseline), and
    the estimated accuracy (CBPE) of a classifier that sends ``confidence``, to compare.

    Outcome events (a label and no prediction) count as well as labels beside a prediction:
    the join (``monitor.engine.outcomes``) gives them their prediction.
    """
    levels = policy.auto.levels
    label = schema.fields.get("label")
    if label is None or not label.present:
        return []
    prediction = schema.fields.get("prediction")
    beside = label.present - schema.outcomes
    where = " and ".join(
        part
        for part in (
            f"a label beside the prediction in {beside}/{schema.events} events" if beside else "",
            f"{schema.outcomes} outcome events joined by request_id" if schema.outcomes else "",
        )
        if part
    )
    found: list[CoveredSignal] = []
    regression = (
        label.kind == "numeric"
        and not label.binary
        and prediction is not None
        and prediction.kind == "numeric"
        and not prediction.binary
    )
    if regression:
        found.append(
            CoveredSignal(
                SignalPolicy(
                    name="regression_error",
                    source=SignalSource.REGRESSION_ERROR,
                    level=levels.labels,
                ),
                "discovered",
                f"numeric label and prediction: {where}; absolute error against the "
                "model's own baseline",
            )
        )
    else:
        found.append(
            CoveredSignal(
                SignalPolicy(
                    name="label_error", source=SignalSource.LABEL_ERROR, level=levels.labels
                ),
                "discovered",
                f"{where}: the rate of wrong predictions",
            )
        )
    confidence = schema.fields.get("confidence")
    classifier = prediction is not None and (prediction.kind == "categorical" or prediction.binary)
    if not regression and classifier and confidence is not None and confidence.numeric:
        found.append(
            CoveredSignal(
                SignalPolicy(
                    name="estimated_accuracy",
                    source=SignalSource.ESTIMATED_ACCURACY,
                    level=levels.confidence,
                ),
                "discovered",
                f"a classifier with confidence {_share(confidence, schema.events)}: expected "
                "accuracy (CBPE, calibrated confidence assumed) beside the realized one",
            )
        )
    return found


def outcome_coverage(
    policy: ModelPolicy, schema: ObservedSchema, present: Iterable[str]
) -> list[CoveredSignal]:
    """The ground-truth signals a model that discovers gains when its outcomes arrive after
    its signals were built: those of :func:`coverage` not in ``present`` (its signals' names),
    named ones in place of discovered ones of the same name, ignores honoured."""
    if not policy.discovers:
        return []
    have = set(present)
    ignored = set(policy.auto.ignore)
    named = {signal.signal_name: signal for signal in policy.signals}
    gained: list[CoveredSignal] = []
    for found in _outcome_signals(policy, schema):
        if found.name in have or found.name in ignored:
            continue
        own = named.get(found.name)
        gained.append(
            found
            if own is None
            else CoveredSignal(own, "overridden", f"named in the policy, over: {found.reason}")
        )
    return gained


def _features_named(signals: Sequence[SignalPolicy]) -> set[str]:
    """Features a named drift signal watches: left out of the discovered drift families."""
    named: set[str] = set()
    for signal in signals:
        if signal.source is SignalSource.FEATURE and signal.feature is not None:
            named.add(signal.feature)
        elif signal.source is SignalSource.FEATURES and signal.features:
            named.update(signal.features)
    return named


def coverage(policy: ModelPolicy, schema: ObservedSchema | None) -> list[CoveredSignal]:
    """The signals ``policy`` watches on a model whose events showed ``schema`` (None: not
    observed yet, only the named ones): discovered ones first, in a fixed order, a named
    signal of a discovered one's name in its place (``overridden``), other named ones after.
    """
    named = {signal.signal_name: signal for signal in policy.signals}
    if not policy.discovers or schema is None:
        return [CoveredSignal(s, "named", "named in the policy") for s in policy.signals]
    ignored = set(policy.auto.ignore)
    covered: list[CoveredSignal] = []
    for found in _discovered(policy, schema):
        if found.name in ignored:
            continue
        own = named.pop(found.name, None)
        if own is None:
            covered.append(found)
        else:
            covered.append(
                CoveredSignal(own, "overridden", f"named in the policy, over: {found.reason}")
            )
    covered += [CoveredSignal(s, "named", "named in the policy") for s in named.values()]
    return covered


def resolved(policy: ModelPolicy, schema: ObservedSchema | None) -> ModelPolicy:
    """``policy`` with the signals :func:`coverage` gives, named: what a monitor is built of."""
    signals = [covered.policy for covered in coverage(policy, schema)]
    return policy.model_copy(update={"signals": signals})
