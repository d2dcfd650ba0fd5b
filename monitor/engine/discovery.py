"""Auto coverage: what a model's events carry (:class:`ObservedSchema`, from its first
events) and what its policy then watches (:func:`coverage`): every discovered signal with its
calibrated default detector and documented level, overridden or added to by the named ones.

Pure: no I/O, no clock. The engine observes a model's first ``auto.discover_events`` events,
then builds the model's signals from :func:`resolved`; ``driftwarden explain`` prints
:func:`coverage` for a file of events; a checkpoint keeps the schema, so a restarted or moved
model watches the same signals.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from detectors.registry import parse_spec
from monitor.config.policy import (
    FeatureKind,
    LevelName,
    ModelPolicy,
    SignalPolicy,
    SignalSource,
)
from monitor.engine.events import Event

__all__ = [
    "MAX_FEATURE_NAME_CHARS",
    "MAX_TRACKED_FEATURES",
    "MIN_FEATURE_SHARE",
    "CoverageNotes",
    "CoveredSignal",
    "FieldSeen",
    "ObservedSchema",
    "compact",
    "coverage",
    "coverage_notes",
    "outcome_coverage",
    "resolved",
]

#: Feature names an observed schema keeps count of; more are counted in ``overflow`` only
#: (an event may carry 1,000 features, a model's events together any number of names).
MAX_TRACKED_FEATURES = 2_000
#: Longer feature names are not tracked either (counted in ``overflow``): a name is any
#: string the producer sends, and a tracked one lives in every checkpoint of the model.
MAX_FEATURE_NAME_CHARS = 200
#: A feature is watched when present in at least this share of the observed events (and in
#: one at least): a name seen once or twice (an id used as a key, a typo) is no signal.
MIN_FEATURE_SHARE = 0.02
#: The ``expect`` of the schema signal holds at most this many names (SignalPolicy's bound):
#: a model whose events carry more has an open-ended schema, which is not watched.
MAX_EXPECTED = 1000

#: The top-level members of the event contract that discovery looks at.
TOP_FIELDS = ("prediction", "confidence", "latency_ms", "error", "feedback", "label", "request_id")

Origin = Literal["discovered", "named", "overridden"]


@dataclass(slots=True)
class FieldSeen:
    """How often one field was present in the observed events, by the kind of its value."""

    numeric: int = 0
    categorical: int = 0
    #: Distinct numeric values, up to a few: tells a 0/1 rate from a numeric distribution.
    #: Immutable, so that the many fields that never get one share the empty set (a model
    #: may track MAX_TRACKED_FEATURES of them).
    values: frozenset[float] = frozenset()

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
            if len(self.values) < 3 and value not in self.values:
                self.values = self.values | {float(value)}
        else:
            self.categorical += 1

    def to_json(self) -> list[Any]:
        return [self.numeric, self.categorical, sorted(self.values)]

    @classmethod
    def from_json(cls, raw: list[Any]) -> FieldSeen:
        numeric, categorical, values = raw
        return cls(int(numeric), int(categorical), frozenset(float(v) for v in values))


@dataclass(slots=True)
class ObservedSchema:
    """What a model's events carried: each top-level field and feature, by kind."""

    events: int = 0
    fields: dict[str, FieldSeen] = field(default_factory=dict)
    features: dict[str, FieldSeen] = field(default_factory=dict)
    #: Feature values seen under names not tracked: past :data:`MAX_TRACKED_FEATURES`, or
    #: longer than :data:`MAX_FEATURE_NAME_CHARS`.
    overflow: int = 0
    #: Events carrying a label and no prediction: outcomes arriving on their own.
    outcomes: int = 0
    #: Rare feature names forgotten at the end of discovery (see :func:`compact`).
    dropped: int = 0

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
                    if len(features) >= MAX_TRACKED_FEATURES or len(name) > MAX_FEATURE_NAME_CHARS:
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
            **({"dropped": self.dropped} if self.dropped else {}),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ObservedSchema:
        """The schema ``to_json`` gave; ValueError naming what is wrong otherwise."""
        try:
            features = {
                str(k): FieldSeen.from_json(v)
                for k, v in raw["features"].items()
                if len(k) <= MAX_FEATURE_NAME_CHARS
            }
            if len(features) > MAX_TRACKED_FEATURES:
                raise ValueError(f"{len(features)} features, over {MAX_TRACKED_FEATURES}")
            return cls(
                events=int(raw["events"]),
                fields={k: FieldSeen.from_json(v) for k, v in raw["fields"].items()},
                features=features,
                overflow=int(raw.get("overflow", 0)),
                outcomes=int(raw.get("outcomes", 0)),
                dropped=int(raw.get("dropped", 0)),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ValueError(f"not an observed schema: {err!r}") from err


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


@dataclass(frozen=True, slots=True)
class CoverageNotes:
    """What discovery saw but does not watch, and why (``/status``, the replay report)."""

    #: Features ignored by ``auto.ignore`` (``feature.<name>``) that the events carried.
    ignored_features: list[str]
    #: Discovered signals ignored by name (``auto.ignore``).
    ignored_signals: list[str]
    #: Features beyond ``auto.max_features`` (the least frequent), and how many in all.
    left_out: list[str]
    left_out_count: int
    #: Features in fewer than ``MIN_FEATURE_SHARE`` of the events, and how many in all.
    rare: list[str]
    rare_count: int
    #: Feature values under names not tracked (too many names, or too long ones).
    overflow: int
    #: Why the schema itself is not watched (None: it is, or no feature was seen).
    schema_unwatched: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "ignored_features": self.ignored_features,
            "ignored_signals": self.ignored_signals,
            "left_out": self.left_out,
            "left_out_count": self.left_out_count,
            "rare": self.rare,
            "rare_count": self.rare_count,
            "overflow": self.overflow,
            "schema_unwatched": self.schema_unwatched,
        }


#: Names listed in notes and reasons (the counts say how many in all).
_LISTED = 20


@dataclass(frozen=True, slots=True)
class _Selection:
    watched: list[tuple[str, FieldSeen]]
    beyond: list[str]
    rare: list[str]
    #: Rare features in all, the forgotten ones too.
    rare_count: int
    ignored: list[str]
    #: Every tracked feature and its kind ("any" when its values had both): the schema.
    expect: dict[str, str] | None
    schema_unwatched: str | None


def _select(policy: ModelPolicy, schema: ObservedSchema) -> _Selection:
    """The features watched (most frequent first, then by name: a bound that keeps the
    same features every time), and those left out, by reason."""
    auto = policy.auto
    ignored_features = {i.removeprefix("feature.") for i in auto.ignore if i.startswith("feature.")}
    least = max(1, math.ceil(MIN_FEATURE_SHARE * schema.events))
    candidates: list[tuple[str, FieldSeen]] = []
    rare: list[str] = []
    ignored: list[str] = []
    for name, seen in schema.features.items():
        if seen.kind is None:
            continue
        if name in ignored_features:
            ignored.append(name)
        elif seen.present < least:
            rare.append(name)
        else:
            candidates.append((name, seen))
    candidates.sort(key=lambda item: (-item[1].present, item[0]))
    beyond = [name for name, _ in candidates[auto.max_features :]]
    expect: dict[str, str] | None = None
    unwatched: str | None = None
    if schema.overflow:
        unwatched = (
            f"open-ended: {schema.overflow} feature values under names past the "
            f"{MAX_TRACKED_FEATURES} tracked (or longer than {MAX_FEATURE_NAME_CHARS} chars)"
        )
    elif len(schema.features) + schema.dropped > MAX_EXPECTED:
        names = len(schema.features) + schema.dropped
        unwatched = f"open-ended: {names} feature names, over {MAX_EXPECTED}"
    elif schema.features:
        # Every name seen, also the ignored, rare and left-out ones: none of them is news.
        expect = {
            name: "any" if seen.numeric and seen.categorical else str(seen.kind)
            for name, seen in sorted(schema.features.items())
            if seen.kind is not None
        }
    return _Selection(
        watched=candidates[: auto.max_features],
        beyond=beyond,
        rare=sorted(rare),
        rare_count=len(rare) + schema.dropped,
        ignored=sorted(ignored),
        expect=expect,
        schema_unwatched=unwatched,
    )


def _mixed(seen: FieldSeen) -> str:
    """What happens to the values of the other kind, when a field had both."""
    if not (seen.numeric and seen.categorical):
        return ""
    if seen.kind == "numeric":
        return f"; {seen.categorical} of them not numbers (text reads as missing)"
    return f"; {seen.numeric} of them numbers, read as categories"


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def _discovered(policy: ModelPolicy, schema: ObservedSchema) -> list[CoveredSignal]:
    """Every signal the schema supports, with the auto defaults, before ignores and names."""
    auto = policy.auto
    levels = auto.levels
    n = schema.events
    found: list[CoveredSignal] = []

    # The model's ``for`` already holds every breach (30 s: 600 events at 20 events/s); the
    # detectors' own ``persist`` (200 events) on top of it only delays the page, and no test
    # turns more often for it (its alpha is set by ``false_alarm_every``, not ``persist``).
    # With ``for: 0`` the detectors keep their own hold. bench/results/policy_quality.md.
    held = {"persist": 0} if policy.health.for_ > 0 else {}

    def add(reason: str, level: LevelName, *, detector: dict[str, Any], **fields: Any) -> None:
        signal = SignalPolicy(level=level, detector=parse_spec(detector | held), **fields)
        found.append(CoveredSignal(signal, "discovered", reason))

    named_features = _features_named(policy.signals)
    selection = _select(policy, schema)
    watched = selection.watched
    beyond = selection.beyond
    cut = (
        f"; {len(beyond)} more beyond auto.max_features={auto.max_features} left unwatched "
        f"({_listed(beyond)})"
        if beyond
        else ""
    )
    # A family's members by name: the order a reader expects, the same on every replica.
    numeric = sorted(name for name, seen in watched if seen.kind == "numeric")
    categorical = sorted(name for name, seen in watched if seen.kind == "categorical")
    drift_numeric = [f for f in numeric if f not in named_features]
    drift_categorical = [f for f in categorical if f not in named_features]
    if drift_numeric:
        add(
            f"{len(drift_numeric)} numeric features in the first {n} events{cut}",
            levels.features,
            name="features",
            source=SignalSource.FEATURES,
            features=drift_numeric,
            detector={"type": "ks_window"},
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
            features=sorted(name for name, _ in watched),
            detector={"type": "missing_rate"},
        )
    if selection.expect is not None:
        add(
            f"the {len(selection.expect)} features and kinds of the first {n} events: "
            "one that appears or changes kind",
            levels.schema_,
            name="schema",
            source=SignalSource.SCHEMA,
            expect=selection.expect,
            detector={"type": "rate_window", "threshold": 0.05},
        )
    prediction = schema.fields.get("prediction")
    if prediction is not None and prediction.kind is not None:
        add(
            f"{prediction.kind} prediction {_share(prediction, n)}{_mixed(prediction)}",
            levels.prediction,
            name="prediction",
            source=SignalSource.PREDICTION,
            detector={"type": "psi" if prediction.kind == "categorical" else "ks_window"},
        )
    confidence = schema.fields.get("confidence")
    if confidence is not None and confidence.numeric:
        add(
            f"confidence {_share(confidence, n)}",
            levels.confidence,
            name="confidence",
            source=SignalSource.CONFIDENCE,
            detector={"type": "ks_window"},
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
            detector={"type": "rate_window"},
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
    held = {"persist": 0} if policy.health.for_ > 0 else {}  # as in ``_discovered``
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
                    detector=parse_spec({"type": "ks_window"} | held),
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
                    name="label_error",
                    source=SignalSource.LABEL_ERROR,
                    level=levels.labels,
                    detector=parse_spec({"type": "rate_window"} | held),
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
                    detector=parse_spec({"type": "ks_window"} | held),
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


def coverage_notes(policy: ModelPolicy, schema: ObservedSchema | None) -> CoverageNotes | None:
    """What the events carried that ``policy`` leaves unwatched, and why (None: nothing
    was discovered)."""
    if not policy.discovers or schema is None:
        return None
    selection = _select(policy, schema)
    discovered = {found.name for found in _discovered(policy, schema)}
    return CoverageNotes(
        ignored_features=selection.ignored[:_LISTED],
        ignored_signals=sorted(discovered & set(policy.auto.ignore)),
        left_out=selection.beyond[:_LISTED],
        left_out_count=len(selection.beyond),
        rare=selection.rare[:_LISTED],
        rare_count=selection.rare_count,
        overflow=schema.overflow,
        schema_unwatched=selection.schema_unwatched,
    )


def compact(policy: ModelPolicy, schema: ObservedSchema) -> None:
    """Forget the rare feature names of an open-ended schema (only counted, but for the few
    that notes list), so that what a model keeps after discovery is bounded by what it
    watches: 100,000 names each seen once leave 20. Coverage and notes stay the same; a
    schema that is not open-ended keeps every name (its schema signal expects them all).
    """
    selection = _select(policy, schema)
    if selection.schema_unwatched is None:
        return
    forget = selection.rare[_LISTED:]
    for name in forget:
        del schema.features[name]
    schema.dropped += len(forget)


def resolved(policy: ModelPolicy, schema: ObservedSchema | None) -> ModelPolicy:
    """``policy`` with the signals :func:`coverage` gives, named, and discovery off: what a
    monitor is built of (built again, it watches the same signals and discovers nothing)."""
    if not policy.discovers or schema is None:
        return policy
    signals = [covered.policy for covered in coverage(policy, schema)]
    auto = policy.auto.model_copy(update={"enabled": False})
    return policy.model_copy(update={"signals": signals, "auto": auto})
