"""Signal extraction: a batch's columns (float64 with NaN = absent, or str lists), each built
once for all the batch's models; each model's detectors read their model's slice of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from itertools import repeat
from operator import attrgetter, is_
from typing import Any, ClassVar

import msgspec
import numpy as np
import numpy.typing as npt

from detectors.base import InputKind
from monitor.config.policy import SignalPolicy, SignalSource
from monitor.engine.events import Event
from monitor.engine.outcomes import expected_correctness, label_matches, regression_error

__all__ = ["Column", "ColumnSet", "EventColumns", "Extractor", "extractors_for"]

NAN = math.nan
FloatArray = npt.NDArray[np.float64]
_EMPTY: dict[str, Any] = {}
_NONE = type(None)


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


def _features_of(found: Any) -> dict[str, Any]:
    """A features mapping as a dict: a policy row's Struct holds the record's features when
    it was decoded (it refuses unnamed ones), null for a named one the record lacks. The
    dict of its non-null ones reads the same in every column: a builder reads an absent
    feature as it reads a null one (``get`` is None; a schema check skips nulls).

    >>> import msgspec
    >>> Features = msgspec.defstruct("Features", [("x0", float | None, None)],
    ...                              rename={"x0": "a.b"})
    >>> _features_of(Features(1.5)), _features_of(Features()), _features_of({"c": 2.0})
    ({'a.b': 1.5}, {}, {'c': 2.0})
    """
    if type(found) is dict:
        return found
    return {k: v for k, v in msgspec.to_builtins(found).items() if v is not None}


def _numbers(values: list[Any]) -> FloatArray:
    """A float64 column from JSON scalars: None and strings are NaN, booleans 0 / 1.

    >>> _numbers([1.5, None, True, "x"]).tolist()
    [1.5, nan, 1.0, nan]
    """
    # numpy converts a list of numbers, bools and None in C; it would also parse "1.5",
    # which the contract treats as missing, hence the (cheap, C-level) type check.
    if str in set(map(type, values)):
        return np.fromiter(map(_as_float, values), dtype=np.float64, count=len(values))
    return np.array(values, dtype=np.float64)


def _nulls(values: list[Any]) -> FloatArray:
    """1.0 where a value is None (null, or absent from the event), else 0.0; one C-level
    pass (a scan of the list when no value is None, the common case), no Python per value.

    >>> _nulls(["eu", None, 0.0, False]).tolist(), _nulls(["eu", "us"]).tolist()
    ([0.0, 1.0, 0.0, 0.0], [0.0, 0.0])
    """
    n = len(values)
    if None not in values:
        return np.zeros(n)
    return np.fromiter(map(is_, values, repeat(None, n)), dtype=bool, count=n).astype(np.float64)


def _categories(values: list[Any]) -> list[str | None]:
    """A categorical column: strings kept as they are, other scalars spelled as text."""
    if set(map(type, values)) <= {str, _NONE}:
        return values
    return list(map(_as_category, values))


class EventColumns:
    """The columns of one batch of events, each built once on first use and shared by
    every model and member that reads it (members slice their model's span out of it).
    """

    __slots__ = ("_cache", "_complete", "_features", "_released", "events", "joined")

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events
        self._cache: dict[Hashable, Any] = {}
        # Keyed by column key, and by ColumnSet token (an int: never a column key).
        self._complete: dict[Hashable, bool | np.ndarray] = {}
        self._released = False
        self._features: list[dict[str, Any]] | None = None
        #: By index into ``events``: the prediction an outcome event was joined to
        #: (``monitor.engine.outcomes``), set before any column of the batch is built.
        self.joined: dict[int, Any] = {}

    @property
    def features(self) -> list[dict[str, Any]]:
        """Each event's features mapping (empty when absent); a row of a batch decoded
        into columns (``monitor.engine.decode``) reads as the dict of its named features."""
        if self._features is None:
            found = [e.features or _EMPTY for e in self.events]
            if set(map(type, found)) - {dict}:
                found = list(map(_features_of, found))
            self._features = found
        return self._features

    def get(self, column: Column) -> Any:
        found = self._cache.get(column.key)
        if found is None:
            if self._released:
                raise RuntimeError(f"column {column.key!r} not built before the batch's release")
            found = self._cache[column.key] = column.build(self)
        return found

    def release_events(self) -> None:
        """Drop the events, keeping the columns built: models whose spans wait hold on to
        these columns (8 bytes per event and column), not to the decoded events."""
        self.events = ()
        self._features = None
        self._released = True

    def complete(self, columns: ColumnSet, start: int = 0, end: int | None = None) -> bool:
        """No value missing in any of ``columns`` in rows ``[start:end]`` (the whole batch
        by default). Per span, not per batch: one event missing a value elsewhere in the
        batch must not cost the other models their deferral and the bank lane.

        Checked once per batch and set: True when no row misses a value, else each row's
        count of rows before it that miss one, so that a span is one subtraction.
        """
        found = self._complete.get(columns.token)
        if found is None:
            found = self._complete[columns.token] = self._rows_missing(columns)
        if found is True:
            return True
        assert isinstance(found, np.ndarray)
        stop = found.size - 1 if end is None else end
        return bool(found[stop] == found[start])

    def _rows_missing(self, columns: ColumnSet) -> bool | np.ndarray:
        missing: np.ndarray | None = None
        for column in columns.columns:
            values = self.get(column)
            if isinstance(values, np.ndarray):
                row = np.isnan(values)
                if not row.any():
                    continue
                if row.ndim > 1:  # a feature family's matrix: a row per event
                    row = np.any(row, axis=tuple(range(1, row.ndim))).reshape(-1)
            elif None not in values:
                continue
            else:
                row = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
            missing = row if missing is None else missing | row
        if missing is None:
            return True
        before = np.zeros(missing.size + 1, dtype=np.int64)
        np.cumsum(missing, out=before[1:])
        return before

    def get_cached(self, key: Hashable) -> Any:
        return self._cache[key]

    def put(self, key: Hashable, value: Any) -> None:
        """Cache a column built alongside another (a feature family is built in one pass)."""
        self._cache[key] = value


class ColumnSet:
    """The columns one model reads, with a token shared by every model reading the same."""

    __slots__ = ("columns", "token")
    _tokens: ClassVar[dict[tuple[Hashable, ...], int]] = {}

    def __init__(self, columns: list[Column], token: int) -> None:
        self.columns = columns
        self.token = token

    @classmethod
    def of(cls, columns: list[Column]) -> ColumnSet:
        keys = tuple(dict.fromkeys(column.key for column in columns))
        token = cls._tokens.setdefault(keys, len(cls._tokens))
        return cls(columns, token)


class Column:
    """How to read one column out of a batch; ``key`` names it for sharing in a batch.

    Calling it on a sequence of events (one model's) returns that column directly.
    """

    __slots__ = ("build", "key")

    def __init__(self, key: Hashable, build: Callable[[EventColumns], Any]) -> None:
        self.key = key
        self.build = build

    def __call__(self, events: Sequence[Event]) -> Any:
        return self.build(EventColumns(events))


Extractor = Column


def _floats(get: Callable[[Any], float | bool | None], events: Sequence[Any]) -> FloatArray:
    """The float64 column of a member typed number (or bool) or null: one C-level pass
    over the events, no list; numpy (1.26 as 2.x) reads None as NaN. Only for such
    members: numpy would parse a string."""
    return np.fromiter(map(get, events), dtype=np.float64, count=len(events))


_PREDICTION = attrgetter("prediction")
_CONFIDENCE = attrgetter("confidence")
_LATENCY = attrgetter("latency_ms")
_ERROR = attrgetter("error")
_FEEDBACK = attrgetter("feedback")


def _prediction_numeric(cols: EventColumns) -> FloatArray:
    return _numbers(list(map(_PREDICTION, cols.events)))


def _prediction_category(cols: EventColumns) -> list[str | None]:
    return _categories(list(map(_PREDICTION, cols.events)))


def _confidence(cols: EventColumns) -> FloatArray:
    return _floats(_CONFIDENCE, cols.events)


def _latency(cols: EventColumns) -> FloatArray:
    return _floats(_LATENCY, cols.events)


def _error(cols: EventColumns) -> FloatArray:
    # An inference event without `error` succeeded; a pure outcome event (a label arriving
    # later) says nothing about serving errors.
    events = cols.events
    out = _floats(_ERROR, events)
    absent = np.flatnonzero(np.isnan(out))
    for i in absent.tolist():
        if events[i].label is None:
            out[i] = 0.0
    return out


def _feedback(cols: EventColumns) -> FloatArray:
    return _floats(_FEEDBACK, cols.events)


def _label_error(cols: EventColumns) -> FloatArray:
    events = cols.events
    out = np.fromiter(
        (
            NAN
            if e.label is None or e.prediction is None
            else (0.0 if label_matches(e.label, e.prediction) else 1.0)
            for e in events
        ),
        dtype=np.float64,
        count=len(events),
    )
    # Outcome events met their prediction in the join: the prediction stays out of the
    # event (prediction drift counted it when it came), the error is the outcome's.
    for i, prediction in cols.joined.items():
        out[i] = 0.0 if label_matches(events[i].label, prediction) else 1.0
    return out


def _regression_error(relative: bool) -> Column:
    def build(cols: EventColumns) -> FloatArray:
        events = cols.events
        out = np.fromiter(
            (
                NAN
                if e.label is None or e.prediction is None
                else regression_error(e.label, e.prediction, relative)
                for e in events
            ),
            dtype=np.float64,
            count=len(events),
        )
        for i, prediction in cols.joined.items():
            out[i] = regression_error(events[i].label, prediction, relative)
        return out

    return Column(("regression_error", relative), build)


def _estimated_accuracy(cols: EventColumns) -> FloatArray:
    events = cols.events
    return np.fromiter(
        (
            NAN if e.prediction is None else expected_correctness(e.confidence, e.prediction)
            for e in events
        ),
        dtype=np.float64,
        count=len(events),
    )


def _numeric_table(cols: EventColumns, names: tuple[str, ...]) -> None:
    """Cache the numeric columns of every feature in ``names``, a feature at a time.

    Each column's values are looked up by one C-level ``map`` of ``dict.get`` over the
    batch (no Python-level loop, no tuple per event), then converted by ``_numbers``.
    """
    features = cols.features
    n = len(features)
    for name in names:
        cols.put(("feature", name), _numbers(list(map(dict.get, features, repeat(name, n)))))


def _feature_numeric(name: str, family: tuple[str, ...] = ()) -> Column:
    """A numeric feature column; a member of ``family`` builds its whole family at once."""
    names = family if name in family else (name,)

    def build(cols: EventColumns) -> FloatArray:
        _numeric_table(cols, names)
        column: FloatArray = cols.get_cached(("feature", name))
        return column

    return Column(("feature", name), build)


def _feature_category(name: str) -> Column:
    def build(cols: EventColumns) -> list[str | None]:
        features = cols.features
        return _categories(list(map(dict.get, features, repeat(name, len(features)))))

    return Column(("feature_category", name), build)


def _feature_missing(name: str) -> Column:
    def build(cols: EventColumns) -> FloatArray:
        features = cols.features
        return _nulls(list(map(dict.get, features, repeat(name, len(features)))))

    return Column(("feature_missing", name), build)


def _feature_matrix(names: list[str]) -> Column:
    def build(cols: EventColumns) -> FloatArray:
        if not cols.events:
            return np.zeros((0, len(names)))
        _numeric_table(cols, tuple(names))
        return np.column_stack([cols.get_cached(("feature", k)) for k in names])

    return Column(("feature_matrix", tuple(names)), build)


#: An event's feature names and the types of their values: few distinct ones per model,
#: so a schema check looks each up once per batch instead of testing every value.
Signature = tuple[tuple[str, ...], tuple[type, ...]]


def _signatures(cols: EventColumns) -> list[Signature]:
    return [(tuple(f), tuple(map(type, f.values()))) for f in cols.features]


_SIGNATURES = Column(("feature_signatures",), _signatures)
_KIND_OF_TYPE: dict[type, str | None] = {
    float: "numeric",
    int: "numeric",
    str: "categorical",
    bool: "categorical",
    _NONE: None,
}


def _breaks(signature: Signature, expect: Mapping[str, str]) -> float:
    """1.0 when a feature with a value is not expected, or not of its expected kind
    (``any`` takes both); a null value breaks nothing (a missing rate watches those)."""
    for name, kind in zip(*signature, strict=True):
        found = _KIND_OF_TYPE.get(kind, "other")
        if found is None:
            continue
        wanted = expect.get(name)
        if wanted != found and (wanted != "any" or found == "other"):
            return 1.0
    return 0.0


def _schema(expect: Mapping[str, str]) -> Column:
    """1 when an event carries a feature ``expect`` lacks, or a value of another kind."""
    known: dict[Signature, float] = {}

    def build(cols: EventColumns) -> FloatArray:
        signatures = cols.get(_SIGNATURES)
        out = np.empty(len(signatures), dtype=np.float64)
        for i, signature in enumerate(signatures):
            found = known.get(signature)
            if found is None:
                if len(known) > 10_000:  # bounded: an adversary may vary every event
                    known.clear()
                found = known[signature] = _breaks(signature, expect)
            out[i] = found
        return out

    return Column(("schema", tuple(sorted(expect.items()))), build)


_PREDICTION_NUMERIC = Column(("prediction",), _prediction_numeric)
_PREDICTION_CATEGORY = Column(("prediction_category",), _prediction_category)
_SINGLE = {
    SignalSource.CONFIDENCE: Column(("confidence",), _confidence),
    SignalSource.LATENCY: Column(("latency_ms",), _latency),
    SignalSource.ERROR: Column(("error",), _error),
    SignalSource.FEEDBACK: Column(("feedback",), _feedback),
    SignalSource.LABEL_ERROR: Column(("label_error",), _label_error),
    SignalSource.ESTIMATED_ACCURACY: Column(("estimated_accuracy",), _estimated_accuracy),
}
_REGRESSION_ERROR = {relative: _regression_error(relative) for relative in (False, True)}


def extractors_for(signal: SignalPolicy) -> list[tuple[str, Column]]:
    """The (member name, column) pairs of a signal: one, or one per listed feature."""
    kind = signal.input_kind
    categorical = kind is InputKind.CATEGORICAL
    source = signal.source
    name = signal.signal_name
    if source is SignalSource.PREDICTION:
        return [(name, _PREDICTION_CATEGORY if categorical else _PREDICTION_NUMERIC)]
    single = _SINGLE.get(source)
    if single is not None:
        return [(name, single)]
    if source is SignalSource.REGRESSION_ERROR:
        return [(name, _REGRESSION_ERROR[signal.error == "relative"])]
    if source is SignalSource.SCHEMA:
        assert signal.expect is not None
        return [(name, _schema(signal.expect))]
    if source is SignalSource.FEATURE:
        assert signal.feature is not None
        maker = _feature_category if categorical else _feature_numeric
        return [(name, maker(signal.feature))]
    assert signal.features is not None
    if source is SignalSource.FEATURES:
        if categorical:
            return [(f"{name}.{f}", _feature_category(f)) for f in signal.features]
        family = tuple(signal.features)
        return [(f"{name}.{f}", _feature_numeric(f, family)) for f in signal.features]
    if source is SignalSource.MISSING:
        return [(f"{name}.{f}", _feature_missing(f)) for f in signal.features]
    return [(name, _feature_matrix(signal.features))]
