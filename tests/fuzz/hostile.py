"""A seeded generator of hostile Kafka records, by kind, for the live fuzz suite: each kind is
one class of input a producer could send (bytes, shapes, sizes, depths, ids, keys, headers).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monitor.engine.events import MAX_FEATURES, MAX_MODEL_ID_BYTES, MAX_STRING_CHARS

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Produced:
    kind: str
    key: bytes | None
    value: bytes | None
    headers: Headers


MODELS = [f"fuzz-{i}" for i in range(4)]
NUMERIC_FIELDS = ["confidence", "latency_ms", "feedback", "prediction", "label"]
KNOWN_FIELDS = [*NUMERIC_FIELDS, "model", "model_version", "ts", "features", "error", "segment"]


def _dump(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def valid_body(rng: random.Random, model: str | None = None) -> dict[str, Any]:
    return {
        "model": model or rng.choice(MODELS),
        "request_id": f"r-{rng.getrandbits(48)}",
        "latency_ms": round(rng.uniform(5, 50), 3),
        "error": rng.random() < 0.05,
        "prediction": rng.random(),
        "features": {"f0": rng.gauss(0, 1), "country": rng.choice(["DE", "FR", "US"])},
    }


def _valid(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    body = valid_body(rng)
    return body["model"].encode(), _dump(body), []


def _random_bytes(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    return b"m", rng.randbytes(rng.randint(1, 300)), []


def _invalid_utf8(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    raw = _dump(valid_body(rng))
    at = rng.randint(1, len(raw) - 2)
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
    return b"m", raw[:at] + bad + raw[at:], []


def _non_object_json(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    body = rng.choice([[1, 2], 42, "model", None, True, [valid_body(rng)], 1.5e10])
    return b"m", _dump(body), []


def _nested(rng: random.Random, depth: int) -> bytes:
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def _deep_unknown(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    # Issue 13 item 1: ~2 KB, nesting past the decoder's depth in a field it skips.
    nested = _nested(rng, rng.randint(1000, 5000))
    return b"m", b'{"model": "fuzz-0", "extra": ' + nested + b"}", []


def _deep_known(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    field = rng.choice(KNOWN_FIELDS)
    nested = _nested(rng, rng.randint(2, 5000))
    return b"m", b'{"model": "fuzz-0", "' + field.encode() + b'": ' + nested + b"}", []


def _huge_number(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    token = rng.choice([b"1e400", b"-1e400", b"1e101", b"9" * rng.randint(310, 5000)])
    field = rng.choice([*NUMERIC_FIELDS, "features"])
    value = b'{"f0": ' + token + b"}" if field == "features" else token
    return b"m", b'{"model": "fuzz-1", "' + field.encode() + b'": ' + value + b"}", []


def _nonfinite_token(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    token = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"])
    field = rng.choice(NUMERIC_FIELDS)
    return b"m", b'{"model": "fuzz-1", "' + field.encode() + b'": ' + token + b"}", []


def _wrong_type(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    body = valid_body(rng)
    field, value = rng.choice(
        [
            ("latency_ms", "slow"),
            ("error", "yes"),
            ("features", [1, 2]),
            ("features", {"f0": {"x": 1}}),
            ("segment", {"region": 1}),
            ("confidence", [0.5]),
            ("request_id", 7),
        ]
    )
    body[field] = value
    return b"m", _dump(body), []


def _oversized(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    size = rng.randint(1_100_000, 3_000_000)
    return b"m", b'{"model": "fuzz-2", "pad": "' + b"x" * size + b'"}', [("src", b"big")]


def _long_model_id(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    n = rng.choice([MAX_MODEL_ID_BYTES + 1, 1000, 20_000])
    model = rng.choice(["m", "é", "\U0001f600"]) * n
    return model.encode()[:10_000], _dump({"model": model, "latency_ms": 1}), []


def _hostile_model_id(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    model = rng.choice(
        [
            "",
            "fraud\n",
            "a\x00b",
            "\x1b[31mred",
            "x\u202egnp.exe",
            "zero\u200bwidth",
            'quote"}{',
            "line\u2028sep",
            7,
            None,
            ["fraud"],
            {"id": "fraud"},
            "\x7f",
            "é" * (MAX_MODEL_ID_BYTES // 2 + 1),
        ]
    )
    return b"m", _dump({"model": model, "latency_ms": 1}), []


def _many_features(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    features = {f"f{i}": i for i in range(50_000)}
    return b"m", _dump({"model": "fuzz-3", "features": features}), []


def _duplicate_keys(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    if rng.random() < 0.5:  # the last value wins: a valid event
        raw = b'{"model": "x", "latency_ms": 1, "model": "fuzz-0", "latency_ms": 3}'
    else:  # the last model is past the limit
        raw = b'{"model": "fuzz-0", "model": "' + b"m" * 500 + b'"}'
    return b"m", raw, []


def _hostile_key_headers(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    key = rng.choice([None, b"", rng.randbytes(64), b"\x00" * 10, b"k" * 100_000])
    headers: Headers = rng.choice(
        [
            [("", b"")],
            [("h", rng.randbytes(100))],
            [(f"h{i}", b"v" * 100) for i in range(1000)],
            [("dup", b"1"), ("dup", b"2")],
            [("é\u202e", b"\xff\xfe")],
        ]
    )
    value = _dump(valid_body(rng)) if rng.random() < 0.5 else b"not json, hostile headers"
    return key, value, headers


def _empty(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    return b"m", rng.choice([b"", None]), []


def _long_string(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    body = valid_body(rng)
    long = "x" * rng.randint(MAX_STRING_CHARS + 1, 5_000)
    where = rng.choice(["category", "feature_name", "prediction", "label", "request_id"])
    if where == "category":
        body["features"]["country"] = long
    elif where == "feature_name":
        body["features"][long] = 1
    else:
        body[where] = long
    return b"m", _dump(body), []


def _missing_model(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    body = valid_body(rng)
    del body["model"]
    return b"m", _dump(body), []


def _bad_ts(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    body = valid_body(rng)
    body["ts"] = rng.choice([1_700_000_000_000, -1, "yesterday", "2024-13-45T99:00:00Z", [1]])
    return b"m", _dump(body), []


def _mutated(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    raw = bytearray(_dump(valid_body(rng)))
    for _ in range(rng.randint(1, 3)):
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    return b"m", bytes(raw), []


def _at_the_limits(rng: random.Random) -> tuple[bytes | None, bytes | None, Headers]:
    body = valid_body(rng, model="edge-" + "m" * (MAX_MODEL_ID_BYTES - 5))
    body["features"] = {f"f{i}": 1e100 for i in range(MAX_FEATURES - 1)}
    body["features"]["country"] = "c" * MAX_STRING_CHARS
    body["ts"] = 1e11
    return b"edge", _dump(body), []


#: kind -> (weight, generator). Heavy kinds are rare: they cost megabytes each.
KINDS: dict[str, tuple[int, Callable[[random.Random], tuple[bytes | None, bytes | None, Headers]]]]
KINDS = {
    "random_bytes": (60, _random_bytes),
    "invalid_utf8": (60, _invalid_utf8),
    "non_object_json": (60, _non_object_json),
    "deep_unknown": (60, _deep_unknown),
    "deep_known": (60, _deep_known),
    "huge_number": (60, _huge_number),
    "nonfinite_token": (60, _nonfinite_token),
    "wrong_type": (60, _wrong_type),
    "long_model_id": (40, _long_model_id),
    "hostile_model_id": (60, _hostile_model_id),
    "duplicate_keys": (60, _duplicate_keys),
    "hostile_key_headers": (30, _hostile_key_headers),
    "empty_or_tombstone": (60, _empty),
    "long_string": (40, _long_string),
    "missing_model": (60, _missing_model),
    "bad_ts": (60, _bad_ts),
    "mutated": (60, _mutated),
    "at_the_limits": (4, _at_the_limits),
    "oversized": (1, _oversized),
    "many_features": (1, _many_features),
}


def hostile_records(count: int, seed: int, *, minimum_per_kind: int = 3) -> list[Produced]:
    """``count`` hostile records: every kind at least ``minimum_per_kind`` times, the rest
    drawn by weight, shuffled; the same for the same seed."""
    rng = random.Random(seed)
    kinds = [kind for kind in KINDS for _ in range(minimum_per_kind)]
    names = list(KINDS)
    weights = [KINDS[k][0] for k in names]
    kinds += rng.choices(names, weights, k=count - len(kinds))
    rng.shuffle(kinds)
    return [Produced(kind, *KINDS[kind][1](rng)) for kind in kinds]


def valid_records(count: int, seed: int) -> list[Produced]:
    rng = random.Random(seed)
    return [Produced("valid", *_valid(rng)) for _ in range(count)]
