"""The batch decoder (monitor/engine/decode.py) against the two things it must equal: the
event decoder's verdict on every record (hostile ones included) and columns.py's values for
every valid record, for every kind of column a policy can read."""

from __future__ import annotations

import json
import random
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config.policy import ModelPolicy, SignalPolicy
from monitor.engine.columns import EventColumns, extractors_for
from monitor.engine.decode import (
    BATCH_MIN,
    DECODE_CHUNK,
    WIDE_BATCHES,
    ColumnDecoder,
    DecodedBatch,
    policy_event_type,
)
from monitor.engine.discovery import ObservedSchema, resolved
from monitor.engine.events import MAX_FEATURES, BadReason, BadRecord, Event, EventDecoder
from monitor.tools.traffic import synthetic_batches
from tests.fuzz.hostile import hostile_records, valid_records
from tests.fuzz.test_decoder_fuzz import events as event_bodies
from tests.fuzz.test_decoder_fuzz import hostile as hostile_values

MAX_BYTES = 64 * 1024
NUMERIC = [f"f{i}" for i in range(10)]


def _signals(*specs: dict[str, Any]) -> list[SignalPolicy]:
    return [SignalPolicy.model_validate(spec) for spec in specs]


#: Every kind of column: top-level members, one feature, families, missing, matrix, schema;
#: the hostile generators' features (f0, country) and the synthetic ones (f0.., c0, c1).
EVERY_COLUMN = _signals(
    {"name": "num", "source": "features", "features": NUMERIC},
    {"name": "cats", "source": "features", "features": ["c0", "c1", "country"],
     "detector": {"type": "psi"}},
    {"source": "feature", "feature": "f0", "name": "f0_again"},
    {"source": "feature", "feature": "country", "detector": {"type": "psi"}},
    {"source": "missing", "features": ["f0", "country", "absent"]},
    {"source": "anomaly", "features": ["f1", "f2"]},
    {"source": "schema", "expect": {**dict.fromkeys(NUMERIC, "numeric"), "c0": "categorical",
                                    "c1": "categorical"}},
    # ``any`` takes numbers and categories alike (the auto policy's mixed features).
    {"source": "schema", "name": "schema_any",
     "expect": {"f0": "any", "f1": "any", "country": "any", "c0": "categorical"}},
    {"source": "prediction"},
    {"source": "prediction", "name": "prediction_class", "detector": {"type": "psi"}},
    {"source": "confidence"},
    {"source": "latency_ms"},
    {"source": "error"},
    {"source": "feedback"},
    {"source": "label_error"},
)  # fmt: skip
#: The bench's: features read as numbers only (the fast type's narrow fields).
BENCH = _signals(
    {"name": "features", "source": "features", "features": NUMERIC},
    {"name": "categories", "source": "features", "features": ["c0", "c1"],
     "detector": {"type": "psi"}},
    {"source": "prediction"},
    {"source": "latency_ms"},
    {"source": "error"},
)  # fmt: skip


def _auto_signals() -> list[SignalPolicy]:
    """What auto coverage watches on the synthetic events (families, missing, schema...)."""
    _, values = next(synthetic_batches(500, 5, seed=11, chunk=500))
    schema = ObservedSchema()
    schema.observe([msgspec.json.decode(value, type=Event) for value in values])
    return list(resolved(ModelPolicy.model_validate({"signals": "auto"}), schema).signals)


POLICIES = {
    "every_column": EVERY_COLUMN,
    "bench": BENCH,
    "auto": _auto_signals(),
    "no_features": _signals({"source": "error"}),
}


def synthetic(n: int, seed: int = 3) -> list[bytes]:
    _, values = next(synthetic_batches(n, 50, seed=seed, chunk=n))
    return values


def awkward(rng: random.Random) -> bytes:
    """A valid record off the fast type's path: a string or boolean where a number is read,
    an unnamed feature, no features, an outcome event, a non-ASCII model, a newline."""
    body: dict[str, Any] = {"model": rng.choice(["a", "b", "modèle-ü"]), "latency_ms": 3}
    kind = rng.randrange(7)
    if kind == 0:
        body["features"] = {"f0": "n/a", "f1": True, "c0": 3, "c1": False}
    elif kind == 1:
        body["features"] = {"f0": 1.5, "unnamed": [1, {"deep": None}], "c0": "a1"}
    elif kind == 2:
        body["label"], body["request_id"] = rng.choice([1, "yes", True]), "r1"
    elif kind == 3:
        body["features"] = {"f2": None, "c1": None}
        body["prediction"] = rng.choice(["cat", 0.7, True, 2])
    elif kind == 4:
        body["features"] = None
        body["error"] = True
    elif kind == 5:
        return b'{"model":\n"a", "features": {"f0": 2}}'
    else:
        body["features"] = {"f0": 1e100, "c0": "x" * 1024}
        body["ts"] = "2026-01-01T00:00:00Z"
    return json.dumps(body).encode()


def assert_same_as_event_decoder(
    decoder: ColumnDecoder, values: list[bytes | None]
) -> DecodedBatch:
    """Same verdict per record (reason and detail), same columns for the valid ones."""
    reference = EventDecoder(decoder.max_bytes)
    verdicts = [reference.decode(value) for value in values]
    batch = decoder.decode(values)
    expected_bad = [(i, v) for i, v in enumerate(verdicts) if isinstance(v, BadRecord)]
    assert batch.bad == expected_bad
    events = [v for v in verdicts if isinstance(v, Event)]
    assert batch.records == [i for i, v in enumerate(verdicts) if isinstance(v, Event)]
    assert batch.models == [e.model for e in events]
    assert [row.request_id for row in batch.rows] == [e.request_id for e in events]
    columns = EventColumns(events)
    for key, column in decoder.columns.items():
        want, got = columns.get(column), batch.columns[key]
        if isinstance(want, np.ndarray):
            assert isinstance(got, np.ndarray) and got.shape == want.shape, key
            assert np.array_equal(got, want, equal_nan=True), key
        else:
            assert list(got) == list(want), key
    return batch


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hostile_records_get_the_event_decoders_verdict_one_by_one(policy: str, seed: int) -> None:
    rng = random.Random(seed)
    values = [p.value for p in hostile_records(400, seed)]
    values += [p.value for p in valid_records(100, seed)] + synthetic(300, seed)
    values += [awkward(rng) for _ in range(100)]
    rng.shuffle(values)
    decoder = ColumnDecoder(POLICIES[policy], MAX_BYTES)
    batch = assert_same_as_event_decoder(decoder, values)
    # The generators reach both outcomes, and the exact path, in bulk.
    assert len(batch.bad) > 300 and len(batch.records) > 400 and len(batch.exact) > 10


@pytest.mark.parametrize("policy", POLICIES)
def test_columns_equal_columns_py_for_valid_records(policy: str) -> None:
    rng = random.Random(5)
    clean = synthetic(2_000)
    decoder = ColumnDecoder(POLICIES[policy], MAX_BYTES)
    # All on the one-call path (the policy type's, or the wide mode's for no named feature).
    assert assert_same_as_event_decoder(decoder, list(clean)).exact == []
    mixed = clean[:1_000] + [awkward(rng) for _ in range(300)]
    rng.shuffle(mixed)
    assert_same_as_event_decoder(decoder, mixed)


#: Policies whose fused columns (``ColumnDecoder._fused``: top-level numbers and numeric
#: features out of one pass) have one member, or none (the top-level numbers alone).
FUSED_EDGES = {
    "one_number": _signals({"source": "feature", "feature": "f0"}),
    "one_top_number": _signals({"source": "latency_ms"}, {"source": "feature", "feature": "c0",
                                                          "detector": {"type": "psi"}}),
}  # fmt: skip


@pytest.mark.parametrize("policy", [*POLICIES, *FUSED_EDGES])
@pytest.mark.parametrize("at", [10, DECODE_CHUNK - 1, DECODE_CHUNK, 2 * DECODE_CHUNK + 7])
def test_a_row_without_features_in_any_chunk_leaves_every_column_exact(
    policy: str, at: int
) -> None:
    """A batch is decoded a part (DECODE_CHUNK records) at a time, each part's columns
    built as it is decoded, then joined; a valid row without features (null or absent:
    the policy type takes it) in any part sends that part to the per-feature path (not
    the fused columns), a refused record to the exact path: the same columns."""
    signals = {**POLICIES, **FUSED_EDGES}[policy]
    values = synthetic(3 * DECODE_CHUNK)
    assert_same_as_event_decoder(ColumnDecoder(signals, MAX_BYTES), list(values))
    for odd in (
        b'{"model": "m", "latency_ms": 4, "error": true}',
        b'{"model": "m", "features": null, "confidence": 0.5}',
        b'{"model": "m", "features": {"f0": "n/a"}, "error": true}',
        b'{"model": "m", "latency_ms": "slow"}',
    ):
        changed = list(values)
        changed[at] = odd
        assert_same_as_event_decoder(ColumnDecoder(signals, MAX_BYTES), changed)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_batch_of_many_parts_gets_each_records_verdict_and_its_columns(policy: str) -> None:
    """Hostile, awkward and valid records spread over several parts of a batch: each
    record's verdict at its own position, and every column, as the event decoder's."""
    rng = random.Random(9)
    values = [p.value for p in hostile_records(900, 9)] + synthetic(2 * DECODE_CHUNK)
    values += [awkward(rng) for _ in range(300)]
    rng.shuffle(values)
    decoder = ColumnDecoder(POLICIES[policy], MAX_BYTES)
    wide = decoder.wide
    batch = assert_same_as_event_decoder(decoder, values)
    assert len(values) > 3 * DECODE_CHUNK and len(batch.bad) > 600 and len(batch.exact) > 30
    if not wide:  # the event decoder's rows are those of ``exact``, by their batch index
        assert batch.exact == [i for i, row in enumerate(batch.rows) if type(row) is Event]


def test_one_bad_record_is_dead_lettered_alone_and_the_rest_decoded() -> None:
    values = synthetic(5_000)
    values[2_500] = b'{"model": "m", "latency_ms": "slow"}'
    batch = ColumnDecoder(BENCH, MAX_BYTES).decode(values)
    ((at, bad),) = batch.bad
    assert at == 2_500 and bad.reason is BadReason.WRONG_TYPE
    assert "latency_ms" in bad.detail and "$[" not in bad.detail  # the record's own error
    assert batch.records == [i for i in range(5_000) if i != 2_500]
    assert batch.exact == []  # only the bad record took the event decoder's path
    assert len(batch.columns[("latency_ms",)]) == 4_999


@pytest.mark.parametrize(
    "values",
    [
        # Records that, joined by newlines, would read as other records.
        [b'{"model": "a", "x": ', b'{"y": 1}}', b'{"model": "c"}{"model": "d"}'],
        [b'{"model": "a", "x": "', b'"}', b'{"model": "c"} {"model": "d"}'],
        [b'{"model": "a"', b"}", b'{"model": "b"}'],
        [b'{"model": "a", "x": {}', b'{"model": "b"}}', b'{"model": "c"}'],
        [b'{"model": "a", "x": [', b'{"model": "b"}]}', b'{"model": "c"}'],
        [b"   ", b'{"model": "b"}', b"\n", b'{"model": "c"}\n{"model": "d"}'],
        [b'{"model": "a"}', b'["not", "an", "object"]', b"{}", b'{"model": "b"}'],
        [None, b"", b'{"model": "a"}', b'{"model": "' + b"m" * 70_000 + b'"}'],
        [b'{"model": "a\\u0000"}', b'{"model": "' + "é".encode() * 91 + b'"}', b'{"model": "ok"}'],
    ],
)
def test_records_that_would_run_into_each_other_keep_their_own_verdict(
    values: list[bytes | None],
) -> None:
    for signals in POLICIES.values():
        assert_same_as_event_decoder(ColumnDecoder(signals, MAX_BYTES), values)


def test_an_empty_batch_and_a_batch_of_bad_records() -> None:
    decoder = ColumnDecoder(EVERY_COLUMN, MAX_BYTES)
    empty = decoder.decode([])
    assert empty.records == [] and empty.bad == []
    assert all(len(column) == 0 for column in empty.columns.values())
    assert_same_as_event_decoder(decoder, [b"x", None, b'{"latency_ms": 1}'])


@given(st.lists(hostile_values() | event_bodies().map(lambda b: json.dumps(b).encode()),
                max_size=12))  # fmt: skip
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_batch_of_hostile_records_gets_the_event_decoders_verdicts(
    values: list[bytes],
) -> None:
    assert_same_as_event_decoder(ColumnDecoder(EVERY_COLUMN, MAX_BYTES), list(values))


def test_feature_names_need_not_be_identifiers() -> None:
    names = ["a.b", "class", "", "x0", "with space"]
    signals = _signals({"source": "missing", "features": names})
    values = [json.dumps({"model": "m", "features": {n: 1 for n in names[:3]}}).encode()]
    assert_same_as_event_decoder(ColumnDecoder(signals, MAX_BYTES), values)


def test_a_policy_type_names_at_most_the_contracts_features() -> None:
    with pytest.raises(ValueError, match="at most 1000 features"):
        policy_event_type([f"f{i}" for i in range(MAX_FEATURES + 1)])
    kind = policy_event_type(["f0"], numeric=1)
    with pytest.raises(msgspec.ValidationError):  # a string: the exact path's, not this type's
        msgspec.json.decode(b'{"model": "m", "features": {"f0": "1.5"}}', type=kind)


def test_every_signal_column_is_built() -> None:
    decoder = ColumnDecoder(EVERY_COLUMN, MAX_BYTES)
    wanted = {column.key for s in EVERY_COLUMN for _, column in extractors_for(s)}
    assert set(decoder.decode(synthetic(10)).columns) == wanted


def test_events_with_unnamed_features_switch_to_the_wide_mode_and_back() -> None:
    decoder = ColumnDecoder(BENCH, MAX_BYTES)
    clean = synthetic(1_000)
    carrying = [
        v.replace(b'"features":{', b'"features":{"unnamed":1,') for v in clean
    ]  # every record
    first = assert_same_as_event_decoder(decoder, list(carrying))
    assert len(first.exact) == len(carrying)  # refused by the policy type, one by one
    for _ in range(WIDE_BATCHES):  # the contract's type, in one call: nothing one by one
        assert assert_same_as_event_decoder(decoder, list(carrying)).exact == []
    assert assert_same_as_event_decoder(decoder, list(clean)).exact == []  # policy type again
    # A few refused records in a batch do not switch: the policy type goes on.
    few = list(clean)
    few[::BATCH_MIN] = carrying[::BATCH_MIN]
    assert len(assert_same_as_event_decoder(decoder, few).exact) == len(few[::BATCH_MIN])
    assert assert_same_as_event_decoder(decoder, list(clean)).exact == []
