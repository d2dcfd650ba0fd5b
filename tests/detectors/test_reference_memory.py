"""A fixed reference of 0 / 1 values or category codes fills in a narrow type (issue 16: the
peak while references fill), with verdicts and checkpoints those of a float64 / int64 one.

The twin of each detector below is the same class with ``reference_dtype`` put back to the
detector's own type, which is how every reference filled before: both get the same values in
the same chunks, and every Reading, and the checkpoint bytes once the reference is released,
must be equal. A checkpoint written while the reference fills (in either type) restores into
either and goes on identically.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors import build_detector, restore_detector
from detectors.base import BaseDetector
from detectors.categorical import JensenShannonSpec, PSISpec, UnseenRateSpec
from detectors.missing import MissingRateSpec
from detectors.rates import RateWindowSpec
from detectors.serialization import unpack
from tests.detectors.test_bank import bits

SPECS: dict[str, Any] = {
    "rate_window": RateWindowSpec(reference={"size": 400}, window=100, min_samples=50, stride=10),
    "missing_rate": MissingRateSpec(reference={"size": 400}, window=100, min_samples=50),
    "psi": PSISpec(
        max_categories=1000, reference={"size": 400}, window=100, min_samples=50, stride=10
    ),
    "jensen_shannon": JensenShannonSpec(
        max_categories=1000, reference={"size": 400}, window=100, min_samples=50
    ),
    "unseen_rate": UnseenRateSpec(
        max_categories=1000, reference={"size": 400}, window=100, min_samples=50
    ),
}
CATEGORICAL = {"psi", "jensen_shannon", "unseen_rate"}


def _wide_twin(spec: Any, seed: int) -> BaseDetector[Any]:
    """The detector as it was before: its reference filled in the detector's own type."""
    detector = build_detector(spec, seed=seed)
    cls = type(detector)
    wide = type(f"Wide{cls.__name__}", (cls,), {"_reference_fill_dtype": lambda self: self.dtype})
    twin: BaseDetector[Any] = wide(spec, seed=seed)
    return twin


def _stream(kind: str, rng: np.random.Generator, n: int) -> list[Any]:
    """0 / 1 values with missing ones, or categories; both change half-way."""
    if kind in CATEGORICAL:
        # Up to 700 categories (codes past an int8's and a uint8's range), then a few new
        # ones crowd the old.
        half = n // 2
        cats = [f"c{int(v)}" for v in rng.integers(0, 700, half)]
        return cats + [f"new{int(v)}" for v in rng.integers(0, 5, n - half)]
    values = (rng.random(n) < np.where(np.arange(n) < n // 2, 0.03, 0.3)) * 1.0
    values[rng.random(n) < 0.05] = np.nan
    return list(values)


def _chunks(values: list[Any], sizes: list[int]) -> list[list[Any]]:
    out, start, i = [], 0, 0
    while start < len(values):
        size = sizes[i % len(sizes)]
        out.append(values[start : start + size])
        start += size
        i += 1
    return out


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_a_filling_reference_is_held_narrow(kind: str) -> None:
    spec = SPECS[kind]
    detector = build_detector(spec)
    detector.update_many(_stream(kind, np.random.default_rng(1), 200))
    ring = detector._reference.ring  # type: ignore[attr-defined]
    assert 0 < ring.count < ring.size
    assert ring.buf.itemsize <= 2, f"{kind}: a filling reference of {ring.buf.dtype}"
    saved = unpack(detector.to_bytes())["state"]["reference"]["ring"]["buf"]
    assert saved.dtype == ring.buf.dtype and saved.size == ring.count


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(sorted(SPECS)),
    seed=st.integers(0, 2**16),
    sizes=st.lists(st.integers(1, 450), min_size=1, max_size=6),
    cut=st.integers(1, 30),
)
def test_narrow_references_conclude_as_wide_ones(
    kind: str, seed: int, sizes: list[int], cut: int
) -> None:
    spec = SPECS[kind]
    narrow = build_detector(spec, seed=seed)
    wide = _wide_twin(spec, seed)
    chunks = _chunks(_stream(kind, np.random.default_rng(seed), 2500), sizes)
    verdicts = set()
    for i, chunk in enumerate(chunks):
        expected = bits(wide.update_many(chunk))
        assert bits(narrow.update_many(chunk)) == expected
        verdicts.add(expected[2])
        if i == cut % len(chunks):
            # A checkpoint of either kind, maybe while the reference fills, restores into
            # the narrow detector and goes on as the wide one.
            narrow = restore_detector(wide.to_bytes() if i % 2 else narrow.to_bytes())
    assert narrow._reference.ready  # type: ignore[attr-defined]
    assert narrow.to_bytes() == wide.to_bytes()
    assert len(verdicts) >= 1


def test_the_streams_make_the_detectors_breach() -> None:
    """The equivalence above is over streams that move every verdict, not only 'ok'."""
    for kind, spec in SPECS.items():
        detector = build_detector(spec)
        seen = {
            detector.update_many(chunk).verdict.value
            for chunk in _chunks(_stream(kind, np.random.default_rng(3), 2500), [37])
        }
        assert seen - {"ok", "inconclusive"}, f"{kind} never breached: {seen}"
