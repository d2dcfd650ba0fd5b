"""The event decoder: every class of hostile input becomes a BadRecord with its reason, at
each field it can hide in, and the contract's limits hold exactly at their edges."""

from __future__ import annotations

import json
from typing import Any

import pytest

from monitor.engine.events import (
    MAX_ABS_NUMBER,
    MAX_FEATURES,
    MAX_MODEL_ID_BYTES,
    MAX_SEGMENTS,
    MAX_STRING_CHARS,
    BadReason,
    BadRecord,
    Event,
    EventDecoder,
)

DECODER = EventDecoder(max_bytes=8 * 1024 * 1024)


def decode(body: Any) -> Event | BadRecord:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return DECODER.decode(raw)


def reason(body: Any) -> BadReason | None:
    found = decode(body)
    return found.reason if isinstance(found, BadRecord) else None


#: Every field of the contract, with a valid value of it.
FIELDS: dict[str, Any] = {
    "model_version": "v1",
    "ts": 1_700_000_000,
    "features": {"a": 1.0},
    "prediction": 0.5,
    "confidence": 0.9,
    "latency_ms": 12.0,
    "error": False,
    "label": "x",
    "feedback": 1,
    "segment": {"region": "eu"},
    "request_id": "r-1",
    "unknown": 1,
}


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deep_nesting_in_any_field_is_a_bad_record_not_an_exception(
    field: str, opener: bytes
) -> None:
    closer = b"]" if opener == b"[" else b"}"
    inner = b"1" if opener != b"[" else b""
    deep = opener * 5000 + inner + closer * 5000
    found = DECODER.decode(b'{"model": "m", "' + field.encode() + b'": ' + deep + b"}")
    assert isinstance(found, BadRecord)
    # A known field refuses the first nested level by type; an unknown one (skipped by
    # the decoder) only by depth.
    expected = {BadReason.TOO_DEEP} if field == "unknown" else {BadReason.WRONG_TYPE}
    if field in ("features", "segment") and opener == b'{"a":':
        expected = {BadReason.WRONG_TYPE}  # the first level is the mapping; its value is not
    assert found.reason in expected


def test_deep_nesting_at_the_top_and_in_the_model_field() -> None:
    assert reason(b"[" * 100_000 + b"]" * 100_000) is BadReason.WRONG_TYPE
    assert reason(b'{"model": ' + b"[" * 5000 + b"]" * 5000 + b"}") is BadReason.WRONG_TYPE
    assert reason(b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b', "model": "m"}') is (
        BadReason.TOO_DEEP
    )


def test_model_id_limits_at_the_edge() -> None:
    assert isinstance(decode({"model": "m" * MAX_MODEL_ID_BYTES}), Event)
    assert reason({"model": "m" * (MAX_MODEL_ID_BYTES + 1)}) is BadReason.MODEL_ID_TOO_LONG
    assert reason({"model": "m" * 1_000_000}) is BadReason.MODEL_ID_TOO_LONG
    # The bound is in bytes: 90 two-byte characters fit, 91 do not.
    assert isinstance(decode({"model": "é" * (MAX_MODEL_ID_BYTES // 2)}), Event)
    assert reason({"model": "é" * (MAX_MODEL_ID_BYTES // 2 + 1)}) is BadReason.MODEL_ID_TOO_LONG
    assert reason({"model": ""}) is BadReason.MISSING_MODEL
    assert reason({"model": 7}) is BadReason.WRONG_TYPE
    assert reason({"latency_ms": 1}) is BadReason.MISSING_MODEL


@pytest.mark.parametrize(
    "char", ["\x00", "\n", "\r", "\x1b", "\x7f", "\x85", "\u200b", "\u202e", "\u2028", "\ufeff"]
)
def test_model_ids_with_control_or_invisible_characters_are_refused(char: str) -> None:
    found = decode({"model": f"fraud{char}x"})
    assert isinstance(found, BadRecord) and found.reason is BadReason.BAD_MODEL_ID
    assert char not in found.detail  # the detail is a repr: it carries no raw control char


def test_feature_and_segment_counts_at_the_edge() -> None:
    at_max = {f"f{i}": i for i in range(MAX_FEATURES)}
    assert isinstance(decode({"model": "m", "features": at_max}), Event)
    over = {f"f{i}": i for i in range(50_000)}
    assert reason({"model": "m", "features": over}) is BadReason.TOO_MANY_FEATURES
    segments = {f"s{i}": "x" for i in range(MAX_SEGMENTS + 1)}
    assert reason({"model": "m", "segment": segments}) is BadReason.TOO_MANY_SEGMENTS


@pytest.mark.parametrize(
    "body",
    [
        {"features": {"a": "x" * (MAX_STRING_CHARS + 1)}},
        {"prediction": "x" * (MAX_STRING_CHARS + 1)},
        {"label": "x" * (MAX_STRING_CHARS + 1)},
        {"segment": {"region": "x" * (MAX_STRING_CHARS + 1)}},
        {"segment": {"k" * (MAX_STRING_CHARS + 1): "eu"}},
        {"model_version": "x" * (MAX_STRING_CHARS + 1)},
        {"request_id": "x" * (MAX_STRING_CHARS + 1)},
    ],
    ids=lambda b: next(iter(b)) + ("-key" if "k" * 10 in json.dumps(b) else ""),
)
def test_every_string_field_is_bounded(body: dict[str, Any]) -> None:
    assert reason({"model": "m", **body}) is BadReason.STRING_TOO_LONG
    fits = json.loads(json.dumps(body).replace("x" * (MAX_STRING_CHARS + 1), "x"))
    fits = json.loads(json.dumps(fits).replace("k" * (MAX_STRING_CHARS + 1), "k"))
    assert isinstance(decode({"model": "m", **fits}), Event)


NUMERIC = ["confidence", "latency_ms", "feedback", "prediction", "label"]


@pytest.mark.parametrize("field", [*NUMERIC, "features"])
@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1e101", b"-1e101", b"9" * 5000], ids=str)
def test_numbers_past_the_bound_or_not_finite_are_refused(field: str, number: bytes) -> None:
    value = b'{"a": ' + number + b"}" if field == "features" else number
    body = b'{"model": "m", "' + field.encode() + b'": ' + value + b"}"
    assert reason(body) is BadReason.NUMBER_OUT_OF_RANGE
    edge = repr(MAX_ABS_NUMBER).encode()
    ok = b'{"a": ' + edge + b"}" if field == "features" else edge
    assert isinstance(DECODER.decode(body.replace(value, ok)), Event)


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"])
def test_non_finite_tokens_are_not_json(token: bytes) -> None:
    assert reason(b'{"model": "m", "latency_ms": ' + token + b"}") is BadReason.NOT_JSON


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (1_700_000_000, None),
        ("2024-05-01T10:00:00Z", None),
        (1_700_000_000_000, BadReason.NUMBER_OUT_OF_RANGE),  # milliseconds, not seconds
        (-1, BadReason.NUMBER_OUT_OF_RANGE),
        ("yesterday", BadReason.WRONG_TYPE),
        ([1], BadReason.WRONG_TYPE),
    ],
)
def test_ts_is_rfc3339_or_bounded_epoch_seconds(ts: Any, expected: BadReason | None) -> None:
    assert reason({"model": "m", "ts": ts}) is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", BadReason.EMPTY),
        (None, BadReason.EMPTY),
        (b"\xff\xfe{}", BadReason.NOT_JSON),
        (b'{"model": "\xff"}', BadReason.NOT_JSON),
        (b'{"model": "\\ud800"}', BadReason.NOT_JSON),  # lone surrogate
        (b"\xef\xbb\xbf" + b'{"model": "m"}', BadReason.NOT_JSON),  # BOM
        (b'{"model": "m"', BadReason.NOT_JSON),
        (b'{"model": "m"} trailing', BadReason.NOT_JSON),
        (b"[]", BadReason.WRONG_TYPE),
        (b"42", BadReason.WRONG_TYPE),
        (b'"model"', BadReason.WRONG_TYPE),
        (b"null", BadReason.WRONG_TYPE),
        (b'{"model": "m", "features": [1, 2]}', BadReason.WRONG_TYPE),
        (b'{"model": "m", "features": {"a": {"b": 1}}}', BadReason.WRONG_TYPE),
        (b'{"model": "m", "error": "yes"}', BadReason.WRONG_TYPE),
        (b'{"model": "m", "segment": {"a": 1}}', BadReason.WRONG_TYPE),
    ],
)
def test_bytes_and_shapes_that_are_not_an_event(raw: bytes | None, expected: BadReason) -> None:
    found = DECODER.decode(raw)
    assert isinstance(found, BadRecord) and found.reason is expected


def test_a_long_feature_name_is_bounded_by_the_record_size_only() -> None:
    # A name is only looked up by the policy's signals, never kept.
    found = decode({"model": "m", "features": {"k" * 100_000: 1}})
    assert isinstance(found, Event) and found.features == {"k" * 100_000: 1.0}


def test_duplicate_keys_take_the_last_value_and_stay_bounded() -> None:
    found = DECODER.decode(b'{"model": "a", "model": "b", "latency_ms": 1, "latency_ms": 2}')
    assert isinstance(found, Event) and (found.model, found.latency_ms) == ("b", 2.0)
    long_last = b'{"model": "a", "model": "' + b"x" * 500 + b'"}'
    assert reason(long_last) is BadReason.MODEL_ID_TOO_LONG


def test_an_unexpected_decoder_failure_is_a_bad_record(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = EventDecoder(max_bytes=1024)

    class Exhausted:
        def decode(self, value: bytes) -> Event:
            raise MemoryError("no memory left")

    monkeypatch.setattr(decoder, "_decoder", Exhausted())
    found = decoder.decode(b'{"model": "m"}')
    assert isinstance(found, BadRecord) and found.reason is BadReason.UNDECODABLE
    assert "MemoryError" in found.detail


def test_records_over_max_bytes_are_refused_before_decoding() -> None:
    decoder = EventDecoder(max_bytes=100)
    found = decoder.decode(b'{"model": "m", "pad": "' + b"x" * 100 + b'"}')
    assert isinstance(found, BadRecord) and found.reason is BadReason.TOO_LARGE
