"""The v1 inference-event contract and its decoder: bytes -> typed Event, or a BadRecord
that says why (the record then goes to the dead-letter topic, never stops the daemon).

Limits of the contract (documented in the README's event contract; past one, the record is
dead-lettered with the reason in brackets):

- ``model``: 1 to ``MAX_MODEL_ID_BYTES`` (180) bytes of UTF-8 and no control character
  (C0, DEL, C1). It becomes a metric label, a Kafka key, a path segment of the operator API
  and a log field: an id of any length in all of those is a cost no event should impose.
  [``model_id_too_long``, ``bad_model_id``]
- ``features``: at most ``MAX_FEATURES`` (1,000) entries; ``segment`` at most
  ``MAX_SEGMENTS`` (64). [``too_many_features``, ``too_many_segments``]
- every string value (categorical feature values, prediction, label, segment keys and
  values, model_version, request_id): at most ``MAX_STRING_CHARS`` (1,024) characters: a
  categorical detector keeps its categories, an outcome join keeps request ids. Feature
  names are bounded only by the record's size: they are looked up, never kept.
  [``string_too_long``]
- every number: finite and within +-``MAX_ABS_NUMBER`` (1e100), so sums of squares in the
  detectors stay finite; a numeric ``ts`` is epoch seconds in ``[0, 1e11]``.
  [``number_out_of_range``]
- any nesting depth in any field, known or unknown: too deep for the decoder is
  [``too_deep``]; any other failure of the decoder is [``undecodable``]: decoding a record
  never raises.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import msgspec

__all__ = [
    "MAX_ABS_NUMBER",
    "MAX_FEATURES",
    "MAX_MODEL_ID_BYTES",
    "MAX_SEGMENTS",
    "MAX_STRING_CHARS",
    "BadReason",
    "BadRecord",
    "Event",
    "EventDecoder",
    "event_time",
]

MAX_MODEL_ID_BYTES = 180
MAX_FEATURES = 1_000
MAX_SEGMENTS = 64
MAX_STRING_CHARS = 1_024
MAX_ABS_NUMBER = 1e100
#: Epoch seconds up to the year 5138: a millisecond timestamp is refused, not misread.
MAX_EPOCH_S = 1e11

Number = Annotated[float, msgspec.Meta(ge=-MAX_ABS_NUMBER, le=MAX_ABS_NUMBER)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_STRING_CHARS)]
ModelId = Annotated[
    str,
    # Characters here; bytes (of a non-ASCII id) and printability are checked after
    # decoding, in C (``str.isprintable``), which is cheaper than a schema pattern.
    msgspec.Meta(min_length=1, max_length=MAX_MODEL_ID_BYTES),
]
EpochSeconds = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_EPOCH_S)]
Scalar = Number | Text | bool


class Event(msgspec.Struct, gc=False):
    """One inference (or delayed outcome) event. Unknown fields are ignored."""

    model: ModelId
    model_version: Text | None = None
    ts: datetime | EpochSeconds | None = None
    features: (
        # Names are not bounded here (a name is only looked up, never kept: a policy names
        # the features it watches): a schema check of every key costs ~10% of decoding.
        Annotated[dict[str, Number | Text | bool | None], msgspec.Meta(max_length=MAX_FEATURES)]
        | None
    ) = None
    prediction: Scalar | None = None
    confidence: Number | None = None
    latency_ms: Number | None = None
    error: bool | None = None
    label: Scalar | None = None
    feedback: Number | None = None
    segment: Annotated[dict[Text, Text], msgspec.Meta(max_length=MAX_SEGMENTS)] | None = None
    request_id: Text | None = None


class BadReason(enum.Enum):
    NOT_JSON = "not_json"
    MISSING_MODEL = "missing_model"
    WRONG_TYPE = "wrong_type"
    TOO_LARGE = "too_large"
    EMPTY = "empty"
    MODEL_ID_TOO_LONG = "model_id_too_long"
    BAD_MODEL_ID = "bad_model_id"
    TOO_MANY_FEATURES = "too_many_features"
    TOO_MANY_SEGMENTS = "too_many_segments"
    STRING_TOO_LONG = "string_too_long"
    NUMBER_OUT_OF_RANGE = "number_out_of_range"
    TOO_DEEP = "too_deep"
    UNDECODABLE = "undecodable"


@dataclass(slots=True, frozen=True)
class BadRecord:
    reason: BadReason
    detail: str


def event_time(event: Event, default: float) -> float:
    """Event time in epoch seconds; ``default`` (receive time) when absent."""
    ts = event.ts
    if ts is None:
        return default
    if isinstance(ts, datetime):
        return ts.timestamp()
    return float(ts)


def _validation_reason(detail: str) -> BadReason:
    """The reason of a msgspec validation error, from its message (``... - at `$.path```)."""
    at_model = detail.endswith("at `$.model`")
    if at_model and "of length <=" in detail:
        return BadReason.MODEL_ID_TOO_LONG
    if (at_model and "of length >=" in detail) or "missing required field `model`" in detail:
        return BadReason.MISSING_MODEL  # absent or empty (not a string: wrong_type)
    if detail.startswith("Expected `object` of length <="):
        if detail.endswith("at `$.segment`"):
            return BadReason.TOO_MANY_SEGMENTS
        return BadReason.TOO_MANY_FEATURES
    if detail.startswith("Expected `str` of length <="):
        return BadReason.STRING_TOO_LONG
    if detail.startswith("Number out of range") or (
        detail.startswith("Expected `float` ") and ("<=" in detail or ">=" in detail)
    ):
        return BadReason.NUMBER_OUT_OF_RANGE
    return BadReason.WRONG_TYPE


class EventDecoder:
    """Decodes record values; reuses one msgspec decoder (no per-record allocation of it).
    ``decode`` returns an Event or a BadRecord for any input: it never raises.

    >>> d = EventDecoder(max_bytes=4096)
    >>> d.decode(b'{"model": "fraud", "latency_ms": 12, "extra": 1}').latency_ms
    12.0
    >>> d.decode(b'{"latency_ms": 12}').reason
    <BadReason.MISSING_MODEL: 'missing_model'>
    >>> d.decode(b'{"model": "m", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}").reason
    <BadReason.TOO_DEEP: 'too_deep'>
    """

    def __init__(self, max_bytes: int, *, event_type: type[Event] = Event) -> None:
        self.max_bytes = max_bytes
        # ``event_type``: a subclass with more members (the replay's recorded events).
        self._decoder = msgspec.json.Decoder(event_type)

    def decode(self, value: bytes | None) -> Event | BadRecord:
        if not value:
            return BadRecord(BadReason.EMPTY, "record has no value")
        if len(value) > self.max_bytes:
            return BadRecord(
                BadReason.TOO_LARGE, f"record is {len(value)} bytes, over max {self.max_bytes}"
            )
        try:
            event: Event = self._decoder.decode(value)
        except msgspec.ValidationError as err:
            detail = str(err)
            return BadRecord(_validation_reason(detail), detail)
        except msgspec.DecodeError as err:
            return BadRecord(BadReason.NOT_JSON, str(err))
        except RecursionError as err:
            return BadRecord(BadReason.TOO_DEEP, f"nested too deep to decode: {err}")
        except Exception as err:  # MemoryError and anything else: one record, one dead letter
            return BadRecord(BadReason.UNDECODABLE, f"{type(err).__name__}: {err}"[:500])
        model = event.model
        if not model.isprintable():
            return BadRecord(
                BadReason.BAD_MODEL_ID,
                f"field `model` {model[:40]!r}... has a control or other non-printable character",
            )
        if not model.isascii() and len(model.encode()) > MAX_MODEL_ID_BYTES:
            return BadRecord(
                BadReason.MODEL_ID_TOO_LONG,
                f"field `model` is {len(model.encode())} bytes of UTF-8, over max "
                f"{MAX_MODEL_ID_BYTES}",
            )
        return event
