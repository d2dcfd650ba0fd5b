"""Exact comparisons for the engine equivalence tests: a Reading as text that tells every
bit (``repr`` round-trips floats, tells -0.0 from 0.0, and NaN equals NaN), and any nested
state with its NaNs made comparable."""

from __future__ import annotations

import math
from typing import Any

from detectors.base import Reading


def reading_bits(reading: Reading) -> list[Any]:
    """``reading`` bit for bit: verdict, samples and the repr of each float."""
    return [reading.verdict.value, reading.samples] + [
        repr(x) for x in (reading.statistic, reading.effect, reading.threshold)
    ]


def same_nan(value: Any) -> Any:
    """``value`` (dicts, lists, tuples of floats and the rest) with every NaN as "nan"."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return {k: same_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [same_nan(v) for v in value]
    return value
