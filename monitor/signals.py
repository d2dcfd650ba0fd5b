"""Signal extraction: from a batch of one model's events to the column each detector reads.

Columns are built once per batch and model (numpy float64; NaN where the value is absent).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.specs import InputKind
from monitor.events import Event
from monitor.policy import SignalPolicy, SignalSource

__all__ = ["Extractor", "extractors_for"]

NAN = math.nan
FloatArray = npt.NDArray[np.float64]
Extractor = Callable[[Sequence[Event]], Any]


def _as_float(value: object) -> float:
    if value is None or isinstance(value, str):
        return NAN
    return float(value)  # type: ignore[arg-type]


def _as_category(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _floats(values: Any, n: int) -> FloatArray:
    return np.fromiter(values, dtype=np.float64, count=n)


def _prediction_numeric(events: Sequence[Event]) -> FloatArray:
    return _floats((_as_float(e.prediction) for e in events), len(events))


def _prediction_category(events: Sequence[Event]) -> list[str | None]:
    return [_as_category(e.prediction) for e in events]


def _confidence(events: Sequence[Event]) -> FloatArray:
    return _floats((NAN if e.confidence is None else e.confidence for e in events), len(events))


def _latency(events: Sequence[Event]) -> FloatArray:
    return _floats((NAN if e.latency_ms is None else e.latency_ms for e in events), len(events))


def _error(events: Sequence[Event]) -> FloatArray:
    # An inference event without `error` succeeded; a pure outcome event (a label arriving
    # later) says nothing about serving errors.
    return _floats(
        (
            (1.0 if e.error else 0.0) if e.error is not None or e.label is None else NAN
            for e in events
        ),
        len(events),
    )


def _feedback(events: Sequence[Event]) -> FloatArray:
    return _floats((NAN if e.feedback is None else e.feedback for e in events), len(events))


def _label_matches(label: object, prediction: object) -> bool:
    if (
        isinstance(label, bool)
        and isinstance(prediction, float | int)
        and not isinstance(prediction, bool)
    ):
        return label == (prediction >= 0.5)
    if isinstance(label, float | int) and isinstance(prediction, float | int):
        return float(label) == float(prediction)
    return _as_category(label) == _as_category(prediction)


def _label_error(events: Sequence[Event]) -> FloatArray:
    return _floats(
        (
            NAN
            if e.label is None or e.prediction is None
            else (0.0 if _label_matches(e.label, e.prediction) else 1.0)
            for e in events
        ),
        len(events),
    )


def _feature_numeric(name: str) -> Extractor:
    def extract(events: Sequence[Event]) -> FloatArray:
        return _floats(
            (_as_float(e.features.get(name)) if e.features else NAN for e in events),
            len(events),
        )

    return extract


def _feature_category(name: str) -> Extractor:
    def extract(events: Sequence[Event]) -> list[str | None]:
        return [_as_category(e.features.get(name)) if e.features else None for e in events]

    return extract


def _feature_missing(name: str) -> Extractor:
    def extract(events: Sequence[Event]) -> FloatArray:
        return _floats(
            (0.0 if e.features and e.features.get(name) is not None else 1.0 for e in events),
            len(events),
        )

    return extract


def _feature_matrix(names: list[str]) -> Extractor:
    width = len(names)

    def extract(events: Sequence[Event]) -> FloatArray:
        flat = _floats(
            (_as_float(e.features.get(n)) if e.features else NAN for e in events for n in names),
            len(events) * width,
        )
        return flat.reshape(len(events), width)

    return extract


def extractors_for(signal: SignalPolicy) -> list[tuple[str, Extractor]]:
    """The (member name, extractor) pairs of a signal: one, or one per listed feature."""
    kind = signal.input_kind
    categorical = kind is InputKind.CATEGORICAL
    source = signal.source
    name = signal.signal_name
    if source is SignalSource.PREDICTION:
        return [(name, _prediction_category if categorical else _prediction_numeric)]
    if source is SignalSource.CONFIDENCE:
        return [(name, _confidence)]
    if source is SignalSource.LATENCY:
        return [(name, _latency)]
    if source is SignalSource.ERROR:
        return [(name, _error)]
    if source is SignalSource.FEEDBACK:
        return [(name, _feedback)]
    if source is SignalSource.LABEL_ERROR:
        return [(name, _label_error)]
    if source is SignalSource.FEATURE:
        assert signal.feature is not None
        maker = _feature_category if categorical else _feature_numeric
        return [(name, maker(signal.feature))]
    assert signal.features is not None
    if source is SignalSource.FEATURES:
        maker = _feature_category if categorical else _feature_numeric
        return [(f"{name}.{f}", maker(f)) for f in signal.features]
    if source is SignalSource.MISSING:
        return [(f"{name}.{f}", _feature_missing(f)) for f in signal.features]
    return [(name, _feature_matrix(signal.features))]
