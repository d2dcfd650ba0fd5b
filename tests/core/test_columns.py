"""Numeric columns (monitor/engine/columns.py for events, monitor/engine/decode.py for
records) against a plain per-value reference of the contract's rule, on every mix of values a
numeric feature or member can hold: numbers (int or float), null, absent, a string (missing,
read as NaN), a boolean (0 / 1); a feature at a time, in a family, and for the decoder's rows
of the fast type, of the event decoder and of the wide mode."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
import pytest

from monitor.config.policy import SignalPolicy
from monitor.engine.columns import EventColumns, extractors_for
from monitor.engine.decode import ColumnDecoder
from monitor.engine.events import Event, EventDecoder

NAMES = ["f0", "f1", "f2"]
SIGNALS = [
    SignalPolicy.model_validate(spec)
    for spec in (
        {"name": "family", "source": "features", "features": NAMES},
        {"source": "missing", "features": NAMES},
        {"source": "confidence"},
        {"source": "latency_ms"},
        {"source": "error"},
        {"source": "feedback"},
    )
]
#: What a numeric feature may hold, and what the column reads (None: absent).
VALUES: list[tuple[Any, float]] = [
    (1.5, 1.5),
    (-3, -3.0),
    (0, 0.0),
    (None, math.nan),
    ("n/a", math.nan),
    (True, 1.0),
    (False, 0.0),
]
ABSENT = object()


def _record(rng: random.Random, kinds: list[int]) -> tuple[dict[str, Any], dict[str, float]]:
    """A record whose features take VALUES[kinds[j]] (or are absent: -1); its expected
    feature values and missing flags."""
    features: dict[str, Any] = {}
    expected: dict[str, float] = {}
    for name, kind in zip(NAMES, kinds, strict=True):
        if kind < 0:
            expected[name] = math.nan
            expected[f"missing.{name}"] = 1.0
            continue
        value, number = VALUES[kind]
        features[name] = value
        expected[name] = number
        expected[f"missing.{name}"] = 1.0 if value is None else 0.0
    body: dict[str, Any] = {"model": rng.choice("ab"), "features": features}
    for member in ("confidence", "latency_ms", "feedback"):
        if rng.random() < 0.7:
            body[member] = rng.choice([0.25, 3, 12.5])
    if rng.random() < 0.7:
        body["error"] = rng.random() < 0.5
    for member in ("confidence", "latency_ms", "feedback"):
        expected[member] = float(body[member]) if member in body else math.nan
    expected["error"] = float(body["error"]) if "error" in body else 0.0
    return body, expected


#: Batches: one value kind throughout, each kind in one feature only among numbers, and a
#: random mix; a kind of -1 leaves the feature out.
SHAPES: list[list[list[int]]] = (
    [[[kind] * len(NAMES)] * 8 for kind in range(-1, len(VALUES))]
    + [[[0, kind, 1]] * 3 + [[0, 1, 2]] * 5 for kind in range(-1, len(VALUES))]
    + [[[random.Random(s * 31 + i).randrange(-1, len(VALUES)) for _ in NAMES] for i in range(60)]
       for s in range(20)]
)  # fmt: skip


def _batch(shape: list[list[int]], seed: int) -> tuple[list[bytes], list[dict[str, float]]]:
    rng = random.Random(seed)
    made = [_record(rng, kinds) for kinds in shape]
    return [json.dumps(body).encode() for body, _ in made], [want for _, want in made]


def _columns_of(found: dict[Any, Any]) -> dict[str, Any]:
    """By the reference's names: a feature's number, its missing flag, a member."""
    out: dict[str, Any] = {}
    for key, values in found.items():
        if key[0] == "feature":
            out[key[1]] = values
        elif key[0] == "feature_missing":
            out[f"missing.{key[1]}"] = values
        elif len(key) == 1:
            out[key[0]] = values
    return out


def _assert_columns(found: dict[str, Any], expected: list[dict[str, float]]) -> None:
    assert sorted(found) == sorted(expected[0])
    for name, values in found.items():
        want = np.array([row[name] for row in expected], dtype=np.float64)
        assert isinstance(values, np.ndarray) and values.dtype == np.float64, name
        assert np.array_equal(values, want, equal_nan=True), (name, values, want)


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_event_columns_read_each_value_as_the_contract_says(shape: int) -> None:
    values, expected = _batch(SHAPES[shape], shape)
    decoder = EventDecoder(1 << 16)
    events = [decoder.decode(value) for value in values]
    assert all(isinstance(event, Event) for event in events)
    columns = EventColumns(events)  # type: ignore[arg-type]
    built = {c.key: columns.get(c) for s in SIGNALS for _, c in extractors_for(s)}
    _assert_columns(_columns_of(built), expected)


@pytest.mark.parametrize("shape", range(len(SHAPES)))
@pytest.mark.parametrize("mode", ["fast", "wide"])
def test_decoded_columns_read_each_value_as_the_contract_says(shape: int, mode: str) -> None:
    values, expected = _batch(SHAPES[shape], shape)
    decoder = ColumnDecoder(SIGNALS, 1 << 16)
    if mode == "wide":
        decoder._wide_left = 1  # as after a batch of refused records
    batch = decoder.decode(values)
    assert batch.bad == [] and len(batch.rows) == len(values)
    if mode == "wide":  # every row an Event, its features a dict
        assert all(type(row) is Event for row in batch.rows) and batch.exact == []
    _assert_columns(_columns_of(batch.columns), expected)


def test_the_reference_batches_reach_every_path_of_the_decoder() -> None:
    """Rows of the fast type with a null (numpy reads it as NaN), rows of the event decoder
    with a string in one feature only (that feature a list, the others arrays) and with a
    boolean (patched into the array)."""
    decoder = ColumnDecoder(SIGNALS, 1 << 16)
    exact = nulls = 0
    for shape in range(len(SHAPES)):
        values, _ = _batch(SHAPES[shape], shape)
        batch = decoder.decode(values)
        exact += len(batch.exact)
        nulls += sum(
            1
            for row in batch.rows
            if row.features is not None
            and type(row.features) is not dict
            and row.features.x0 is None
        )
    assert exact > 100 and nulls > 20


#: What a categorical feature may hold; only null and absent are missing (an empty string,
#: false and 0 compare equal to nothing the missing flag looks for).
CATEGORY_VALUES: list[Any] = ["eu", "", None, ABSENT, True, False, 0, 0.0, 2.5]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["events", "fast", "wide"])
def test_missing_flags_of_a_categorical_feature_are_one_for_null_or_absent_only(
    seed: int, mode: str
) -> None:
    rng = random.Random(seed)
    # A batch of one kind of value throughout (seed 0: no value missing, every value
    # missing, ...), or a random mix.
    if seed < 3:
        picked = [CATEGORY_VALUES[[0, 2, 3][seed]]] * 40
    else:
        picked = [rng.choice(CATEGORY_VALUES) for _ in range(60)]
    bodies = []
    for value in picked:
        features: dict[str, Any] = {"f0": 1.0}
        if value is not ABSENT:
            features["region"] = value
        bodies.append(json.dumps({"model": "a", "features": features}).encode())
    want = np.array([value is None or value is ABSENT for value in picked], dtype=np.float64)
    signals = [
        SignalPolicy.model_validate({"source": "missing", "features": ["f0", "region"]}),
        SignalPolicy.model_validate(
            {"source": "feature", "feature": "region", "detector": {"type": "psi"}}
        ),
    ]
    key = ("feature_missing", "region")
    if mode == "events":
        decoder = EventDecoder(1 << 16)
        columns = EventColumns([decoder.decode(body) for body in bodies])  # type: ignore[arg-type]
        found = {c.key: columns.get(c) for s in signals for _, c in extractors_for(s)}[key]
    else:
        column_decoder = ColumnDecoder(signals, 1 << 16)
        if mode == "wide":
            column_decoder._wide_left = 1
        batch = column_decoder.decode(bodies)
        assert batch.bad == []
        found = batch.columns[key]
    assert isinstance(found, np.ndarray) and found.dtype == np.float64
    assert np.array_equal(found, want), (picked, found)
