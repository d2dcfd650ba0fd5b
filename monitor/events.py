"""The v1 inference-event contract and its decoder: bytes -> typed Event, or a BadRecord
that says why (the record then goes to the dead-letter topic, never stops the daemon).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

import msgspec

__all__ = ["BadReason", "BadRecord", "Event", "EventDecoder", "event_time"]

Scalar = float | str | bool


class Event(msgspec.Struct, gc=False):
    """One inference (or delayed outcome) event. Unknown fields are ignored."""

    model: str
    model_version: str | None = None
    ts: datetime | float | None = None
    features: dict[str, float | str | bool | None] | None = None
    prediction: Scalar | None = None
    confidence: float | None = None
    latency_ms: float | None = None
    error: bool | None = None
    label: Scalar | None = None
    feedback: float | None = None
    segment: dict[str, str] | None = None
    request_id: str | None = None


class BadReason(enum.Enum):
    NOT_JSON = "not_json"
    MISSING_MODEL = "missing_model"
    WRONG_TYPE = "wrong_type"
    TOO_LARGE = "too_large"
    EMPTY = "empty"


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


class EventDecoder:
    """Decodes record values; reuses one msgspec decoder (no per-record allocation of it).

    >>> d = EventDecoder(max_bytes=1024)
    >>> d.decode(b'{"model": "fraud", "latency_ms": 12, "extra": 1}').latency_ms
    12.0
    >>> d.decode(b'{"latency_ms": 12}').reason
    <BadReason.MISSING_MODEL: 'missing_model'>
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._decoder = msgspec.json.Decoder(Event)

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
            if "`model`" in detail and ("missing" in detail or detail.endswith("$.model`")):
                return BadRecord(BadReason.MISSING_MODEL, detail)
            return BadRecord(BadReason.WRONG_TYPE, detail)
        except msgspec.DecodeError as err:
            return BadRecord(BadReason.NOT_JSON, str(err))
        if not event.model:
            return BadRecord(BadReason.MISSING_MODEL, "field `model` is empty")
        return event
