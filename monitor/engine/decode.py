"""Decoding a batch of records straight into the columns a policy reads: each record into a
policy-derived msgspec type (no dict per event), with the same verdict per record as
:class:`~monitor.engine.events.EventDecoder` and the same column values as
:mod:`monitor.engine.columns`. The daemon decodes its batches through :class:`ColumnarPath`,
which picks this decoder or the event decoder batch by batch (``bench/results/decode.md``).

How a batch goes (``bench/results/decode.md`` has the figures):

1. Records that are empty or over ``max_bytes`` are bad at once (the decoder's checks).
2. Each other record is decoded into a policy type (:func:`policy_event_type`): every
   member of :class:`Event` with the same types and limits, except ``features``, a Struct
   whose fields are the features the policy names, with ``forbid_unknown_fields`` (numbers
   only for those read as numbers). One msgspec call per record costs no more than one
   ``decode_lines`` call over the joined batch, and keeps each record its own input.
3. A record the policy type refuses (or whose model id needs checking) is decoded by
   :class:`EventDecoder` itself and gets its verdict: a BadRecord (one dead letter, never the
   batch), or an :class:`Event` with its features dict (valid: a feature no signal names, a
   string where a number was expected). When many records of a batch are refused, the next
   batches are decoded into :class:`Event` directly (the wide mode) rather than twice each.
4. Columns are built from the rows: the numeric features and the top-level numbers
   (confidence, latency, error, feedback) out of one pass (a tuple of them per row, one
   ``np.fromiter``), the prediction's from one list, the other features a feature at a
   time on first use, as lists; the label-based members by columns.py's own builders.

Steps 1 to 4 run DECODE_CHUNK records at a time, and the parts are joined: a part's columns
are built right after its records are decoded, while its rows (~1 MB) are still in the
processor's cache. Every column is read row by row, so the joined parts are the batch's
columns; a batch read whole would read every row back from all over the heap, once per
pass over the rows (``bench/results/decode.md``).

Why the policy type refuses unnamed features rather than ignoring them: the contract bounds
every feature (count, string length, number range, nesting); a Struct that skipped unnamed
ones would let a record through that :class:`EventDecoder` dead-letters. Refused, such a
record takes the exact path; it is also the record that tells auto discovery of a new name.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, cast

import msgspec
import numpy as np

from detectors.base import InputKind
from monitor.config.policy import SignalPolicy, SignalSource
from monitor.engine.columns import (
    _KIND_OF_TYPE,
    Column,
    EventColumns,
    FloatArray,
    _breaks,
    _categories,
    _nulls,
    _numbers,
    extractors_for,
)
from monitor.engine.events import MAX_FEATURES, BadRecord, Event, EventDecoder, Number, Text

if TYPE_CHECKING:
    from monitor.config.policy import ModelPolicy
    from monitor.engine.engine import Engine

log = logging.getLogger(__name__)

__all__ = ["ColumnDecoder", "ColumnarPath", "DecodedBatch", "policy_event_type", "reads_features"]

#: A batch of at least BATCH_MIN rows, more than 1 / WIDE_SHARE of which the policy type
#: refused, turns the wide mode on for WIDE_BATCHES batches (then the policy type is tried
#: again: the traffic may have changed, or discovery named the new features).
BATCH_MIN = 64
WIDE_SHARE = 10
WIDE_BATCHES = 16
#: A batch is decoded DECODE_CHUNK records at a time, each part's columns built right after
#: its records are decoded: about 1 MB of rows, which a core's cache still holds.
DECODE_CHUNK = 1024

FeatureValue = Number | Text | bool | None


#: Every member of :class:`Event` with its type (and so its limits) and default.
_EVENT_FIELDS = [(f.name, f.type, f.default) for f in msgspec.structs.fields(Event)]


def policy_event_type(features: Sequence[str], *, numeric: int = 0) -> type[msgspec.Struct]:
    """The policy type of an event whose policy reads ``features`` (names, in order); the
    first ``numeric`` of them take a number or null only (the contract also allows a string
    or a boolean: a record with one is not of this type, and takes the exact path).

    >>> kind = policy_event_type(["amount", "country"])
    >>> row = msgspec.json.decode(b'{"model": "m", "features": {"amount": 3}}', type=kind)
    >>> row.features.x0, row.features.x1
    (3.0, None)
    >>> msgspec.json.decode(b'{"model": "m", "features": {"other": 3}}', type=kind)
    Traceback (most recent call last):
    ...
    msgspec.ValidationError: Object contains unknown field `other` - at `$.features`
    """
    if len(features) > MAX_FEATURES:
        raise ValueError(f"a policy type names at most {MAX_FEATURES} features.")
    # Fields are named by position and renamed to the features' names: a name need not be
    # an identifier ("a.b", "class", "") and attrgetter reads the positional ones.
    fields = [
        (_field(i), Number | None if i < numeric else FeatureValue, None)
        for i in range(len(features))
    ]
    feature_type = msgspec.defstruct(
        "PolicyFeatures",
        fields,
        rename={_field(i): name for i, name in enumerate(features)},
        forbid_unknown_fields=True,
        gc=False,
    )
    members = [
        (name, feature_type | None, None) if name == "features" else (name, kind, default)
        for name, kind, default in _EVENT_FIELDS
    ]
    return msgspec.defstruct("PolicyEvent", members, gc=False)


@dataclass(slots=True)
class DecodedBatch:
    """A batch decoded into columns: row ``i`` is the valid record ``records[i]``."""

    #: Each valid row's position in the batch (bad records have none).
    records: list[int]
    #: Each valid row's model id.
    models: list[str]
    #: The decoded rows (of the policy type, or :class:`Event` for a record decoded by
    #: the event decoder): model_version, request_id, label for the engine's bookkeeping.
    rows: list[Any]
    #: By ``Column.key`` (as in :mod:`monitor.engine.columns`), one value per row.
    columns: dict[Hashable, Any] = field(default_factory=dict)
    #: The bad records: (position in the batch, why).
    bad: list[tuple[int, BadRecord]] = field(default_factory=list)
    #: The rows the event decoder decoded: refused by the policy type (a feature no signal
    #: names, a string or boolean where a number is read), or with a model id to check.
    exact: list[int] = field(default_factory=list)
    #: ``model_codes``' answer, once asked (a cache: not a field to give or compare).
    _codes: tuple[dict[str, int], np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def model_codes(self) -> tuple[dict[str, int], np.ndarray]:
        """Each model's first row (the models in order of first appearance), and each row's
        model code: the first row of its model. One pass over the model ids, whoever asks
        (the path's survey, the engine's regrouping).

        >>> first, codes = DecodedBatch([0, 1, 2], ["b", "a", "b"], [None] * 3).model_codes()
        >>> first, codes.tolist()
        ({'b': 0, 'a': 1}, [0, 1, 0])
        """
        if self._codes is None:
            models = self.models
            first: dict[str, int] = {}
            codes = np.fromiter(
                map(first.setdefault, models, range(len(models))),
                dtype=np.intp,
                count=len(models),
            )
            self._codes = (first, codes)
        return self._codes


_MODEL = attrgetter("model")
#: The sources that read a feature's value (the others read its presence, or its kind).
_READS_VALUES = (SignalSource.ANOMALY, SignalSource.FEATURE, SignalSource.FEATURES)
_FEATURES = attrgetter("features")


def _field(i: int) -> str:
    return f"x{i}"


def _plain(models: list[str]) -> bool:
    """No model id needs the event decoder's checks after decoding (printable ASCII)."""
    return all(map(str.isascii, models)) and all(map(str.isprintable, models))


class ColumnDecoder:
    """Decodes batches of records into the columns of ``signals``; ``decode`` never raises.

    >>> from monitor.config.policy import SignalPolicy
    >>> signals = [SignalPolicy(source="latency_ms"),
    ...            SignalPolicy(source="features", features=["amount"])]
    >>> batch = ColumnDecoder(signals, max_bytes=4096).decode([
    ...     b'{"model": "a", "latency_ms": 12, "features": {"amount": 3}}',
    ...     b'{"latency_ms": 12}',
    ...     b'{"model": "b", "features": {"amount": 4, "other": [1]}}',
    ...     b'{"model": "c", "features": {"amount": "n/a", "other": 1}}'])
    >>> batch.records, batch.models, [(i, bad.reason.value) for i, bad in batch.bad]
    ([0, 3], ['a', 'c'], [(1, 'missing_model'), (2, 'wrong_type')])
    >>> batch.columns[("latency_ms",)].tolist(), batch.columns[("feature", "amount")].tolist()
    ([12.0, nan], [3.0, nan])
    """

    def __init__(
        self,
        signals: Iterable[SignalPolicy],
        max_bytes: int,
        *,
        top_level: bool = True,
        unread: Iterable[str] = (),
    ) -> None:
        self.max_bytes = max_bytes
        #: The columns to build, by key (each once, however many signals read it).
        self.columns: dict[Hashable, Column] = {}
        #: False: only the columns read out of ``features`` and the top-level numbers and
        #: prediction are built; the engine's EventColumns builds the others from the rows
        #: on first use (after the outcome join, which the label-based columns read).
        self.top_level = top_level
        numeric: dict[str, None] = {}
        categorical: set[str] = set()
        other: dict[str, None] = {}
        for signal in signals:
            for _, column in extractors_for(signal):
                self.columns.setdefault(column.key, column)
            names = dict.fromkeys(_feature_names(signal))
            if signal.source in _READS_VALUES:
                if signal.input_kind is InputKind.CATEGORICAL:
                    categorical.update(names)
                else:
                    numeric.update(names)
            other.update(names)
        #: Features the events carry that no signal reads: in the policy type (checked as
        #: the contract checks them, and by a schema check) so that their records are not
        #: refused, never built into a column of their own.
        self.unread = tuple(name for name in dict.fromkeys(unread) if name not in other)
        other.update(dict.fromkeys(self.unread))
        #: Features read as numbers and never as categories (a missing rate or a schema
        #: check may read them too): the fast type takes numbers (or null) for them, and a
        #: record with a string or boolean there takes the exact path (still valid).
        self.numeric = tuple(name for name in numeric if name not in categorical)
        self.features = self.numeric + tuple(n for n in other if n not in set(self.numeric))
        self.row_type = policy_event_type(self.features, numeric=len(self.numeric))
        members = {f.name: f.type for f in msgspec.structs.fields(self.row_type)}
        self._no_features = members["features"].__args__[0]()  # out of `Struct | None`
        self._rows = msgspec.json.Decoder(self.row_type)
        #: The contract's own type, for batches of the wide mode (see ``decode``).
        self._wide_rows = msgspec.json.Decoder(Event)
        #: Batches left to decode in the wide mode; always, when no feature is named (the
        #: policy type would then refuse every record that has features).
        self._wide_left = 0
        self._always_wide = not self.features
        self._events = EventDecoder(max_bytes)
        #: One attribute getter per feature, in the order of ``features``: of a row's
        #: features, and of the row itself (``features.x0``).
        self._getters = [attrgetter(_field(i)) for i in range(len(self.features))]
        self._dotted = [attrgetter(f"features.{_field(i)}") for i in range(len(self.features))]
        #: The top-level number members (or booleans) a column reads, and the getter of
        #: those and of the numeric features together: one tuple per row, one pass.
        kinds = {key[0] for key in self.columns if isinstance(key, tuple) and key}
        self._top = tuple(member for member in _TOP_NUMBERS if member in kinds)
        self._fused = (
            attrgetter(*self._top, *(f"features.{_field(i)}" for i in range(len(self.numeric))))
            if self.numeric
            else None
        )

    @property
    def wide(self) -> bool:
        """The next batch is decoded into :class:`Event` (the wide mode)."""
        return self._always_wide or self._wide_left > 0

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        # Wide mode: when the policy type refused many records of a batch (events carrying
        # features no signal names), the next ones are decoded into the contract's type (a
        # features dict, validated as the event decoder does) rather than twice each.
        wide = self._always_wide or self._wide_left > 0
        if len(values) <= DECODE_CHUNK:
            batch = self._decode_part(values, 0, wide)
        else:
            # A part at a time, each part's columns built right after its records are
            # decoded, while its rows are still in the processor's cache.
            batch = _concatenated(
                [
                    self._decode_part(values[at : at + DECODE_CHUNK], at, wide)
                    for at in range(0, len(values), DECODE_CHUNK)
                ]
            )
        if wide:
            self._wide_left -= 1
        elif len(batch.exact) * WIDE_SHARE > len(batch.rows) >= BATCH_MIN:
            self._wide_left = WIDE_BATCHES
        return batch

    def _decode_part(self, values: Sequence[bytes | None], offset: int, wide: bool) -> DecodedBatch:
        """``values`` (the batch's from position ``offset`` on) decoded, with columns."""
        max_bytes = self.max_bytes
        if all(values) and max(map(len, cast(Sequence[bytes], values)), default=0) <= max_bytes:
            positions: list[int] = list(range(offset, offset + len(values)))
            candidates = cast(Sequence[bytes], values)
            bad: list[tuple[int, BadRecord]] = []
        else:  # the event decoder's own verdict on empty and oversized records
            positions, bad = [], []
            at_value: list[int] = []
            for i, value in enumerate(values):
                if value and len(value) <= max_bytes:
                    positions.append(offset + i)
                    at_value.append(i)
                else:
                    found = self._events.decode(value)
                    assert isinstance(found, BadRecord)
                    bad.append((offset + i, found))
            candidates = [cast(bytes, values[i]) for i in at_value]
        rows = self._decode_rows(candidates, self._wide_rows if wide else self._rows)
        exact: list[int] = []
        models = None if None in rows else list(map(_MODEL, rows))
        if models is None or not _plain(models):
            decode = self._events.decode
            kept: list[Any] = []
            records: list[int] = []
            for at, row in enumerate(rows):
                if row is None or not (row.model.isascii() and row.model.isprintable()):
                    row = decode(candidates[at])
                    if isinstance(row, BadRecord):
                        bad.append((positions[at], row))
                        continue
                    exact.append(len(kept))
                kept.append(row)
                records.append(positions[at])
            bad.sort(key=itemgetter(0))
            models = list(map(_MODEL, kept))
        else:
            records, kept = positions, rows
        assert models is not None
        batch = DecodedBatch(records, models, kept, bad=bad, exact=exact)
        self._build_columns(batch, wide)
        return batch

    # -------------------------------------------------------------------- decoding

    def _decode_rows(
        self, values: Sequence[bytes], decoder: msgspec.json.Decoder[Any]
    ) -> list[Any]:
        """A row (of ``decoder``'s type) for each of ``values``, or None for a record the
        event decoder must decode. One call per record: as cheap as one ``decode_lines``
        call over the joined batch (``bench/results/decode.md``), and each record is its
        own input (no framing to trust, no failed batch to resume)."""
        decode = decoder.decode
        out: list[Any] = []
        append = out.append
        for value in values:
            try:
                append(decode(value))
            except Exception:  # the event decoder then gives the verdict and its reason
                append(None)
        return out

    # -------------------------------------------------------------------- columns

    def _build_columns(self, batch: DecodedBatch, wide: bool) -> None:
        rows = batch.rows
        n = len(rows)
        # Rows holding a features dict (all in the wide mode, else the event decoder's).
        dicts: Sequence[int] = range(n) if wide else batch.exact
        k = len(self.numeric)
        #: Each feature's values (a list), or for a feature read as numbers its float
        #: column when every value is a number or null (NaN then means null: a JSON number
        #: is never NaN). Built on first use, a column at a time: no tuple per row, and
        #: no list at all for a feature no column reads (the unread ones).
        by_name: dict[str, Any] = {}
        #: The top-level number members the columns read, by member name.
        top: dict[str, FloatArray] = {}
        fused = None if dicts else self._fused_block(rows)
        if fused is not None:
            # Every row a policy row with its features: the numeric features and the
            # top-level numbers came out of one pass over the rows; the other features
            # are read through the rows too (no list of the rows' features).
            for i, member in enumerate(self._top):
                top[member] = fused[i]
            for j in range(k):
                by_name[self.features[j]] = fused[len(self._top) + j]
            feats: list[Any] = rows
            getters = self._dotted
            found_dicts: list[tuple[int, Any]] = []
        else:
            feats = list(map(_FEATURES, rows))
            if None in feats or dicts:
                no_features = self._no_features
                feats = [no_features if f is None or type(f) is dict else f for f in feats]
            # A dict row's features, by row (an empty or absent dict reads as the Struct
            # with no feature set, as the substitute above).
            found_dicts = [(i, found) for i in dicts if (found := rows[i].features)]
            getters = self._getters
            if self._top:
                block = _float_block(attrgetter(*self._top), rows, len(self._top))
                top = dict(zip(self._top, block, strict=True))
        position = {name: j for j, name in enumerate(self.features)}

        def values_of(name: str) -> list[Any]:
            values = list(map(getters[position[name]], feats))
            for i, found in found_dicts:
                values[i] = found.get(name)
            return values

        def column_of(name: str) -> Any:
            column = by_name.get(name)
            if column is not None:
                return column
            j = position[name]
            if j >= k:
                column = by_name[name] = values_of(name)
                return column
            patch = [found.get(name) for _, found in found_dicts]
            if str in set(map(type, patch)):
                # A string where the type wants a number (the event decoder's row): kept as
                # it is, read as NaN by ``numbers`` and as present by the missing rate.
                column = by_name[name] = values_of(name)
                return column
            # Numbers or null only: straight from the rows into the column, no list (numpy
            # reads None as NaN, 1.26 as 2.x).
            column = np.fromiter(map(getters[j], feats), dtype=np.float64, count=n)
            if patch:
                column[[i for i, _ in found_dicts]] = np.array(patch, dtype=np.float64)
            by_name[name] = column
            return column

        read_as_numbers: dict[str, FloatArray] = {}

        def numbers(name: str) -> FloatArray:
            found = column_of(name)
            if isinstance(found, np.ndarray):
                return found
            column = read_as_numbers.get(name)
            if column is None:
                column = read_as_numbers[name] = _numbers(found)
            return column

        # The other top-level members (those the outcome join is read with): the columns'
        # own builders, over rows that have their attributes.
        event_columns = EventColumns(cast(Sequence[Event], rows))
        predictions: list[Any] | None = None
        for key, column in self.columns.items():
            assert isinstance(key, tuple)  # every key of columns.py is
            kind = key[0]
            if kind == "feature":
                batch.columns[key] = numbers(key[1])
            elif kind == "feature_category":
                batch.columns[key] = _categories(list(column_of(key[1])))
            elif kind == "feature_missing":
                found = column_of(key[1])
                batch.columns[key] = (
                    np.isnan(found).astype(np.float64)
                    if isinstance(found, np.ndarray)
                    else _nulls(found)
                )
            elif kind == "feature_matrix":
                names = key[1]
                batch.columns[key] = (
                    np.column_stack([numbers(name) for name in names])
                    if n
                    else np.zeros((0, len(names)))
                )
            elif kind == "schema":
                batch.columns[key] = self._schema(dict(key[1]), rows, column_of, dicts)
            elif kind in _TOP_NUMBERS:
                batch.columns[key] = self._top_column(kind, top[kind], rows)
            elif kind in _PREDICTION_KINDS:
                if predictions is None:
                    predictions = list(map(_PREDICTION, rows))
                batch.columns[key] = (
                    _numbers(predictions) if kind == "prediction" else _categories(predictions)
                )
            elif self.top_level:
                batch.columns[key] = column.build(event_columns)

    def _fused_block(self, rows: list[Any]) -> FloatArray | None:
        """The top-level numbers and the numeric features of ``rows``, a row of the result
        per member then per feature (as ``_top`` and ``numeric``), out of one pass over the
        rows; None when a row has no features (null or absent: the per-feature path)."""
        if self._fused is None:
            return None
        try:
            return _float_block(self._fused, rows, len(self._top) + len(self.numeric))
        except AttributeError:  # ``features.x0`` of a row whose features are None
            return None

    @staticmethod
    def _top_column(member: str, values: FloatArray, rows: list[Any]) -> FloatArray:
        """As ``columns._error`` for the error rate (which reads the rows' labels), else
        the member's values as they are (``columns._floats``)."""
        if member == "error":
            # An inference event without `error` succeeded; a pure outcome event (a label
            # arriving later) says nothing about serving errors.
            for i in np.flatnonzero(np.isnan(values)).tolist():
                if rows[i].label is None:
                    values[i] = 0.0
        return values

    def _schema(
        self,
        expect: dict[str, str],
        rows: list[Any],
        column_of: Callable[[str], Any],
        dicts: Sequence[int],
    ) -> FloatArray:
        """As ``columns._schema``: 1 when a row has a feature ``expect`` lacks, or a value
        of another kind; a column at a time. A policy row holds the named features only
        (None when absent, which ``_schema`` ignores as it ignores null); the event
        decoder's rows are checked on their dict (unnamed features included)."""
        n = len(rows)
        breaks = np.zeros(n, dtype=bool)
        for name in self.features:
            found = column_of(name)
            want = expect.get(name)
            if isinstance(found, np.ndarray):  # numbers or null only
                if want not in ("numeric", "any"):
                    breaks |= ~np.isnan(found)
                continue
            # ``any`` takes numbers and categories alike (as ``columns._breaks``).
            fits = {
                t
                for t, kind in _KIND_OF_TYPE.items()
                if kind is None or kind == want or want == "any"
            }
            breaks |= ~np.fromiter(map(fits.__contains__, map(type, found)), dtype=bool, count=n)
        out = breaks.astype(np.float64)
        for i in dicts:
            features = rows[i].features
            if features:
                out[i] = _breaks((tuple(features), tuple(map(type, features.values()))), expect)
            else:
                out[i] = 0.0
        return out


#: The top-level members read as numbers (or booleans, read as 0 / 1) into a column keyed
#: by their name alone, as ``columns._floats`` reads them: typed number (or bool) or null.
_TOP_NUMBERS = ("confidence", "latency_ms", "error", "feedback")
#: The columns of the prediction, as ``columns._prediction_numeric`` / ``_category``.
_PREDICTION_KINDS = frozenset({"prediction", "prediction_category"})


def _flat_values(getter: Callable[[Any], Any], rows: list[Any], members: int) -> FloatArray:
    """``getter``'s values of ``rows`` (a tuple of ``members`` numbers or null per row, a
    value when one), row after row: one C-level pass over the rows, each row and its values
    read once (numpy reads None as NaN, a boolean as 0 / 1). A pass per member costs more
    the larger the batch: every pass reads every row again, from all over the heap
    (``bench/results/decode.md``)."""
    n = len(rows)
    if members == 1:
        return np.fromiter(map(getter, rows), dtype=np.float64, count=n)
    return np.fromiter(chain.from_iterable(map(getter, rows)), dtype=np.float64, count=n * members)


def _as_block(flat: FloatArray, rows: int, members: int) -> FloatArray:
    """``_flat_values`` as a (members, rows) array, each member's column contiguous."""
    return np.ascontiguousarray(flat.reshape(rows, members).T)


def _float_block(getter: Callable[[Any], Any], rows: list[Any], members: int) -> FloatArray:
    """``getter``'s values of ``rows`` as a (members, rows) float64 array."""
    return _as_block(_flat_values(getter, rows, members), len(rows), members)


def _concatenated(parts: list[DecodedBatch]) -> DecodedBatch:
    """The decoded parts of one batch (each part's positions already the batch's) as one:
    its rows, bad records and columns one part after the other. Every column is built
    row by row (a row's value depends on that row alone), so a part's column is that
    part's slice of the batch's."""
    batch = DecodedBatch([], [], [])
    for part in parts:
        kept = len(batch.rows)
        batch.records += part.records
        batch.models += part.models
        batch.rows += part.rows
        batch.bad += part.bad
        batch.exact += [kept + i for i in part.exact]
    for key, first in parts[0].columns.items():
        pieces = [part.columns[key] for part in parts]
        if isinstance(first, np.ndarray):
            batch.columns[key] = np.concatenate(pieces)
        else:
            assert not any(isinstance(piece, np.ndarray) for piece in pieces), key
            batch.columns[key] = list(chain.from_iterable(pieces))
    return batch


def _feature_names(signal: SignalPolicy) -> list[str]:
    source = signal.source
    if source is SignalSource.FEATURE:
        return [signal.feature] if signal.feature is not None else []
    if source is SignalSource.SCHEMA:
        return sorted(signal.expect or {})
    if source in (SignalSource.FEATURES, SignalSource.MISSING, SignalSource.ANOMALY):
        return list(signal.features or [])
    return []


#: Unread features the column path names in its policy type: seen in 1 / UNREAD_SHARE of a
#: batch's rows (of the first UNREAD_SAMPLE of a wide batch), MAX_UNREAD names at most (a
#: flood of one-off names stays out: its records take the exact path, one by one).
UNREAD_SHARE = 100
UNREAD_SAMPLE = 1000
MAX_UNREAD = 64
#: Names looked at per batch, about: rows of a thousand one-off names each would otherwise
#: cost a million counts a batch (5x the event decoder's whole decoding of it, measured).
UNREAD_BUDGET = 100_000

#: The kinds of column read out of an event's ``features`` (the others read its top-level
#: members, which a policy row has too).
FEATURE_KINDS = frozenset(
    {"feature", "feature_category", "feature_missing", "feature_matrix", "schema"}
)


def reads_features(key: Hashable) -> bool:
    """Whether the column of ``key`` is read out of the events' features."""
    return isinstance(key, tuple) and bool(key) and key[0] in FEATURE_KINDS


_LABEL = attrgetter("label")
_PREDICTION = attrgetter("prediction")


class ColumnarPath:
    """Chooses, batch by batch, how the daemon decodes: straight into columns
    (:class:`ColumnDecoder` over the signals of the engine's models) or into
    :class:`Event` as before (``decode`` returns None: the caller decodes the batch with
    its event decoder).

    What reads an event's ``features`` dict gets one: the rows of a model that discovers
    (``schema.observe``: a new model of a discovering policy, or one still observing) and
    those of outcome events (a label, no prediction: the outcome join's schema observes
    them) are its :class:`Event`, decoded again by the event decoder. A column the decoder
    does not build (a model's discovery resolved features it does not name) is built by
    :class:`~monitor.engine.columns.EventColumns` from the rows, which read a policy row's
    features as the dict of its named ones (the same values: see ``columns._features_of``).
    So every batch may take columns; the choice is only about cost:

    - when more than a quarter of a batch's rows had to be decoded again (models
      discovering: a start, a flood of new ids), the next batch is decoded into events
      directly, and ``note`` tells from its models when columns pay again;
    - when a model reads a feature column the decoder lacks, the decoder is rebuilt over
      the wider union of signals (one ``defstruct``), for the next batches; past the
      contract's ``MAX_FEATURES`` the union restarts from the models that lacked it.
    """

    #: More than 1 / EVENTS_SHARE of a batch's rows decoded twice: the next batch is
    #: decoded into events directly.
    EVENTS_SHARE = 4

    def __init__(self, engine: Engine, max_bytes: int) -> None:
        self.engine = engine
        self.max_bytes = max_bytes
        self.decoder: ColumnDecoder | None = None
        #: The decoder's signals, by the keys of their columns (each once).
        self._signals: dict[tuple[Hashable, ...], SignalPolicy] = {}
        #: Per ColumnSet token: its feature columns are all the decoder's.
        self._covered: dict[int, bool] = {}
        #: By id: a policy (kept, so the id stays its own), whether it discovers.
        self._policies: dict[int, tuple[ModelPolicy, bool]] = {}
        #: Features no signal reads, named in the policy type (``_learn``).
        self._unread: tuple[str, ...] = ()
        #: The next batch is decoded into events (the first: no decoder yet).
        self.events_next = True
        self._events = EventDecoder(max_bytes)
        #: Batches decoded each way, and rows decoded again (tests and the bench read them).
        self.columnar_batches = 0
        self.event_batches = 0
        self.rows_decoded_again = 0

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch | None:
        """``values`` straight into columns, or None: decode them into events."""
        decoder = self.decoder
        if self.events_next or decoder is None:
            self.event_batches += 1
            return None
        wide = decoder.wide
        batch = decoder.decode(values)
        if wide or batch.exact:
            self._learn(batch, wide)
        models = batch.models
        full = self._survey(batch.model_codes()[0])
        rows = batch.rows
        again = [i for i, model in enumerate(models) if model in full] if full else []
        labels = list(map(_LABEL, rows))
        if labels.count(None) != len(labels):
            predictions = list(map(_PREDICTION, rows))
            outcomes = [
                i
                for i, label in enumerate(labels)
                if label is not None and predictions[i] is None and models[i] not in full
            ]
            again = sorted(again + outcomes) if again else outcomes
        decode = self._events.decode
        redone = 0
        for i in again:
            if type(rows[i]) is not Event:
                event = decode(values[batch.records[i]])
                assert isinstance(event, Event)  # the policy type accepted it
                rows[i] = event
                redone += 1
        self.rows_decoded_again += redone
        self.events_next = redone * self.EVENTS_SHARE > len(rows)
        self.columnar_batches += 1
        return batch

    def note(self, models: Sequence[str]) -> None:
        """The models of a batch that took the event path, each once per event (after the
        engine applied it): whether the next batch may take columns."""
        full = self._survey(dict.fromkeys(models))
        if full:
            redone = sum(1 for model in models if model in full)
            self.events_next = redone * self.EVENTS_SHARE > len(models)
        else:
            self.events_next = False
        if self.decoder is None:
            self._widen([])

    def _learn(self, batch: DecodedBatch, wide: bool) -> None:
        """Name in the policy type the features no signal reads that the batch's events
        carry often (in 1 / UNREAD_SHARE of its rows, at most MAX_UNREAD names), so that
        their records are not refused (and decoded twice) or the batches decoded wide."""
        room = MAX_UNREAD - len(self._unread)
        if room <= 0:
            return
        rows = batch.rows
        at = range(min(len(rows), UNREAD_SAMPLE)) if wide else batch.exact[:UNREAD_SAMPLE]
        decoder = self.decoder
        assert decoder is not None
        known = set(decoder.features)
        counts: Counter[str] = Counter()
        # Each row's first names only: the rows' names, not the rows, bound the work.
        per_row = max(MAX_UNREAD, UNREAD_BUDGET // max(len(at), 1))
        for i in at:
            features = rows[i].features
            if type(features) is dict:
                counts.update(name for name in islice(features, per_row) if name not in known)
        least = max(1, (len(at) if wide else len(rows)) // UNREAD_SHARE)
        fresh = [name for name, n in counts.most_common() if n >= least][:room]
        if not fresh:
            return
        before = self._unread
        self._unread = (*before, *fresh)
        if not self._build(self._signals):
            self._unread = before
        log.debug("the column decoder now also names %d unread features", len(self._unread))

    def _survey(self, models: Iterable[str]) -> set[str]:
        """The models (of ``models``) whose rows must be events: those that discover. Also
        widens the decoder to every feature column the others read."""
        engine = self.engine
        monitors = engine.models
        covered = self._covered
        missing: list[list[SignalPolicy]] = []
        tokens: list[int] = []
        full: set[str] = set()
        for model in models:
            monitor = monitors.get(model)
            if monitor is None:
                policy = engine.policy_for(model)
                found = self._policies.get(id(policy))
                if found is None or found[0] is not policy:
                    if len(self._policies) > 10_000:  # a flood of new ids, each a copy
                        self._policies.clear()
                    found = self._policies[id(policy)] = (policy, policy.discovers)
                if found[1]:
                    full.add(model)
                elif not self._reads(policy.signals):
                    missing.append(list(policy.signals))
                continue
            if monitor.discovering:
                full.add(model)
                continue
            token = monitor.column_set().token
            ok = covered.get(token)
            if ok is None:
                ok = covered[token] = self._reads(s.policy for s in monitor.signals)
            if not ok:
                missing.append([s.policy for s in monitor.signals])
                tokens.append(token)
        if missing and not self._widen(missing):
            # Too many features for one type: these models' columns are built from the
            # rows (correct, slower), and not asked for again.
            covered.update(dict.fromkeys(tokens, True))
        return full

    def _reads(self, signals: Iterable[SignalPolicy]) -> bool:
        decoder = self.decoder
        if decoder is None:
            return False
        have = decoder.columns
        return all(
            column.key in have
            for signal in signals
            for _, column in extractors_for(signal)
            if reads_features(column.key)
        )

    def _widen(self, missing: list[list[SignalPolicy]]) -> bool:
        """Rebuild the decoder over its signals and ``missing``; when together they name
        more features than a policy type may, over ``missing`` alone (False: not even)."""
        fresh: dict[tuple[Hashable, ...], SignalPolicy] = {}
        for signals in missing:
            for signal in signals:
                keys = tuple(column.key for _, column in extractors_for(signal))
                fresh.setdefault(keys, signal)
        return self._build({**self._signals, **fresh}) or self._build(fresh)

    def _build(self, signals: dict[tuple[Hashable, ...], SignalPolicy]) -> bool:
        try:
            decoder = ColumnDecoder(
                signals.values(), self.max_bytes, top_level=False, unread=self._unread
            )
        except ValueError:  # more features than the contract allows in one type
            return False
        self.decoder = decoder
        self._signals = signals
        self._covered = {}
        return True
