"""Fuzz of EventDecoder.decode alone (hypothesis, 100,000 inputs): any bytes decode to an
Event within the contract's limits or to a BadRecord with a reason; decode never raises.

Hypothesis draws 2,000 hostile documents; each is decoded with 49 byte-level mutations of
it (flips, cuts, splices of hostile tokens) made by the example's own seeded Random, which
is far cheaper than drawing 100,000 documents.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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

EXAMPLES = 2_000
PER_EXAMPLE = 50
#: Small enough that some generated records are too large, large enough for deep nesting.
MAX_BYTES = 64 * 1024
DECODER = EventDecoder(max_bytes=MAX_BYTES)
FIELDS = [
    "model",
    "model_version",
    "ts",
    "features",
    "prediction",
    "confidence",
    "latency_ms",
    "error",
    "label",
    "feedback",
    "segment",
    "request_id",
    "unknown",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["", "fraud", "é" * 91, "a\x00b", "m" * 181, "x" * 1025])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)
feature_maps = st.dictionaries(
    st.text(max_size=12),
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=12),
    max_size=8,
) | st.integers(min_value=MAX_FEATURES - 1, max_value=MAX_FEATURES + 2).map(
    lambda n: {f"f{i}": i for i in range(n)}
)
models = st.text(min_size=0, max_size=60) | st.sampled_from(
    ["fraud", "m" * MAX_MODEL_ID_BYTES, "m" * (MAX_MODEL_ID_BYTES + 1), "a\nb", "\u202e"]
)
field_values: dict[str, st.SearchStrategy[Any]] = {
    "model": models | json_values,
    "features": feature_maps | json_values,
    "segment": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=MAX_SEGMENTS + 2)
    | json_values,
}
plausible: dict[str, st.SearchStrategy[Any]] = {
    "ts": st.integers(0, 2 * 10**9) | st.just("2024-05-01T10:00:00Z"),
    "prediction": st.floats(0, 1) | st.sampled_from(["yes", "no"]),
    "latency_ms": st.floats(0, 1e4),
    "error": st.booleans(),
    "request_id": st.text(max_size=20),
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """An object with contract fields, most often a model, values plausible or hostile."""
    keys = draw(st.sets(st.sampled_from(FIELDS[1:]), max_size=6))
    body = {}
    if draw(st.integers(0, 9)):
        body["model"] = draw(st.sampled_from(["fraud", "ranker"]) | field_values["model"])
    for key in sorted(keys):
        hostile_value = field_values.get(key, json_values)
        body[key] = draw(plausible.get(key, hostile_value) | hostile_value)
    return body


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:  # a JSON document that need not be an object
        return _encode({"v": draw(json_values)})[6:-1]
    if kind == 2:  # deep nesting in any field, known or not
        depth = draw(st.integers(1, 6000))
        field = draw(st.sampled_from(FIELDS))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        inner = b"1" if closer == b"}" else b""
        nested = opener * depth + inner + closer * depth
        return b'{"model": "m", "' + field.encode() + b'": ' + nested + b"}"
    if kind == 3:  # a number token past float range, or not finite
        token = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"9" * 400]))
        field = draw(st.sampled_from(FIELDS))
        return b'{"model": "m", "' + field.encode() + b'": ' + token + b"}"
    if kind == 4:  # a valid-looking event, mutated byte-wise
        raw = bytearray(_encode(draw(events())))
        for _ in range(draw(st.integers(1, 4))):
            if not raw:
                break
            at = draw(st.integers(0, len(raw) - 1))
            raw[at] = draw(st.integers(0, 255))
        return bytes(raw)
    if kind == 5:  # oversized
        return (
            b'{"model": "m", "pad": "' + b"x" * draw(st.integers(MAX_BYTES - 30, MAX_BYTES)) + b'"}'
        )
    return _encode(draw(events()))  # structured: many of these are Events


def _check(value: bytes) -> Event | BadRecord:
    found = DECODER.decode(value)
    assert isinstance(found, Event | BadRecord), type(found)
    if isinstance(found, BadRecord):
        assert isinstance(found.reason, BadReason) and isinstance(found.detail, str)
        return found
    model = found.model
    assert model and model.isprintable() and len(model.encode()) <= MAX_MODEL_ID_BYTES
    features = found.features or {}
    assert len(features) <= MAX_FEATURES and len(found.segment or {}) <= MAX_SEGMENTS
    # Feature names are bounded by the record's size only.
    strings: list[Any] = [*(found.segment or {}).items()]
    strings += [s for s in (found.model_version, found.request_id) if s is not None]
    for value_ in [found.prediction, found.label, *features.values()]:
        if isinstance(value_, str):
            strings.append(value_)
        elif isinstance(value_, float):
            assert math.isfinite(value_) and abs(value_) <= MAX_ABS_NUMBER
    for number in (found.confidence, found.latency_ms, found.feedback):
        assert number is None or (math.isfinite(number) and abs(number) <= MAX_ABS_NUMBER)
    for text in strings:
        for part in text if isinstance(text, tuple) else (text,):
            assert len(part) <= MAX_STRING_CHARS
    return found


TOKENS = [
    b"NaN",
    b"Infinity",
    b"1e400",
    b"-0",
    b"[" * 3000,
    b'"\\ud800"',
    b"\xff",
    b"\x00",
    b'"model":',
    b"{",
    b"}",
    b",",
    b'"' * 3,
    b"null",
    b"9" * 400,
]


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    out = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        at = rng.randint(0, len(out))
        if op == 0 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif op == 1:
            out[at:at] = rng.choice(TOKENS)
        elif op == 2:
            del out[at : at + rng.randint(1, 8)]
        else:
            out = out[:at]
    return bytes(out)


decoded: list[int] = [0, 0]  # inputs, of which events


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(hostile(), st.randoms(use_true_random=False))
def _fuzz(value: bytes, rng: random.Random) -> None:
    for variant in [value, *(_mutate(value, rng) for _ in range(PER_EXAMPLE - 1))]:
        if isinstance(_check(variant), Event):
            decoded[1] += 1
        decoded[0] += 1


def test_decode_never_raises_and_every_event_is_within_the_limits() -> None:
    _fuzz()
    inputs, accepted = decoded
    print(f"\ndecoded {inputs} hostile inputs: {accepted} events, {inputs - accepted} bad records")
    assert inputs >= EXAMPLES * PER_EXAMPLE
    # The generator is not degenerate: it reaches both outcomes in bulk.
    assert accepted > inputs // 100 and inputs - accepted > inputs // 2
