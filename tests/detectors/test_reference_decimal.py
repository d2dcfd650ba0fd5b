"""A fixed reference of measurements fills as exact decimals (issue 16: the peak while
references fill): 4 bytes a value where the values have few decimals, float64 from the first
value that has no exact decimal code, and every Reading and checkpoint as before.

The twin of each detector is the same class with its reference filling in float64, which is
how every numeric reference filled before: both get the same values in the same chunks, and
every Reading and every checkpoint (while the reference fills too) must be equal byte for
byte; a checkpoint of either, taken while it fills, restores into the other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors import build_detector, restore_detector
from detectors.base import BaseDetector
from detectors.numeric import AdwinSpec, KSWindowSpec
from detectors.quantile import QuantileSpec
from detectors.window import DECIMAL_BLOCK, DECIMAL_PLACES, DecimalRing
from tests.detectors.test_bank import bits

SPECS: dict[str, Any] = {
    "ks_window": KSWindowSpec(reference={"size": 1500}, window=200, min_samples=100, stride=20),
    "quantile": QuantileSpec(reference={"size": 1500}, window=200, min_samples=100, stride=20),
    "adwin": AdwinSpec(reference={"size": 1500}, window=200, min_samples=100, stride=20, persist=0),
}

#: Kinds of values a reference may fill with: decimals of some places, values with no
#: decimal code, and the edges of the code range.
KINDS = ("decimal", "full", "mixed", "edges")


def _twin(spec: Any, seed: int) -> BaseDetector[Any]:
    """The detector as it was before: its reference filled in float64."""
    cls = type(build_detector(spec, seed=seed))
    wide = type(f"Wide{cls.__name__}", (cls,), {"_reference_fill_dtype": lambda self: self.dtype})
    twin: BaseDetector[Any] = wide(spec, seed=seed)
    return twin


def _values(kind: str, places: int, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` values of ``kind``, as a JSON reader parses them (from their decimal text)."""
    base = rng.normal(10.0, 3.0, n) * np.where(np.arange(n) < (3 * n) // 5, 1.0, 2.5)
    if kind == "full":
        return base
    decimals = np.array([float(f"{v:.{places}f}") for v in base])
    if kind == "decimal":
        return decimals
    if kind == "mixed":
        # Mostly decimals; now and then more places than the scale holds, or none at all.
        out = decimals.copy()
        out[rng.random(n) < 0.002] = base[:1][0] / 3.0
        more = rng.random(n) < 0.01
        out[more] = np.array([float(f"{v:.{min(places + 2, 9)}f}") for v in base[more]])
        return out
    edges = np.array(
        [
            0.0,
            -0.0,
            1e-6,
            -1e-6,
            2147.483647,
            -2147.483648,
            214748.3647,
            2**31 - 1.0,
            2.0**31,
            -(2.0**31),
            1e150,
            -1e150,
            np.inf,
            -np.inf,
            np.nan,
            5e-324,
            0.1 + 0.2,
        ]
    )
    out = decimals.copy()
    hit = rng.random(n) < 0.03
    out[hit] = rng.choice(edges, int(hit.sum()))
    return out


def _chunks(values: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    out, start, i = [], 0, 0
    while start < values.size:
        size = sizes[i % len(sizes)]
        out.append(values[start : start + size])
        start += size
        i += 1
    return out


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(SPECS)),
    kind=st.sampled_from(KINDS),
    places=st.integers(0, DECIMAL_PLACES + 2),
    seed=st.integers(0, 2**16),
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=6),
    cut=st.integers(0, 40),
)
def test_decimal_references_conclude_as_float64_ones(
    name: str, kind: str, places: int, seed: int, sizes: list[int], cut: int
) -> None:
    spec = SPECS[name]
    decimal = build_detector(spec, seed=seed)
    wide = _twin(spec, seed)
    rng = np.random.default_rng(seed)
    chunks = _chunks(_values(kind, places, rng, 5000), sizes)
    for i, chunk in enumerate(chunks):
        assert bits(decimal.update_many(chunk)) == bits(wide.update_many(chunk))
        # Every checkpoint, while the reference fills too, is the float64 one's.
        assert decimal.to_bytes() == wide.to_bytes()
        if i == cut % len(chunks):
            # Either one's checkpoint restores into a detector that fills as decimals and
            # goes on as the float64 one.
            decimal = restore_detector(wide.to_bytes() if i % 2 else decimal.to_bytes())
    assert decimal._reference.ready  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(
        st.lists(
            st.one_of(
                st.floats(allow_nan=False, allow_infinity=True),
                # A JSON number of k decimals, as a reader parses it.
                st.builds(
                    lambda m, k: float(f"{m}e-{k}"),
                    st.integers(-(3 * 10**11), 3 * 10**11),
                    st.integers(0, 8),
                ),
                st.integers(-(2**31) - 5, 2**31 + 5).map(float),
            ),
            min_size=1,
            max_size=20,
        ),
        min_size=1,
        max_size=8,
    ),
    block=st.integers(1, 40),
)
def test_a_decimal_ring_reads_back_every_value_it_took_bit_for_bit(
    parts: list[list[float]], block: int
) -> None:
    total = sum(len(p) for p in parts)
    ring = DecimalRing(total, block=block)
    taken: list[float] = []
    for part in parts:
        ring.extend(np.array(part, dtype=np.float64))
        taken += part
        got = ring.values()
        assert got.dtype == np.float64
        assert got.view(np.int64).tolist() == np.array(taken).view(np.int64).tolist()
    assert ring.count == total and ring.pos == 0
    assert ring.as_ring(np.float64).ordered().view(np.int64).tolist() == (
        np.array(taken).view(np.int64).tolist()
    )


def test_decimals_rescale_and_widen() -> None:
    ring = DecimalRing(10, block=1)
    ring.extend(np.array([3.0, -7.0]))
    assert (ring.scale, ring.buf.dtype) == (0, np.int32)
    ring.extend(np.array([0.125]))
    assert ring.scale == 3 and ring.buf[:3].tolist() == [3000, -7000, 125]
    # 3,000,000.5 at 3 places would pass the int32 range: float64 from then on.
    ring.extend(np.array([3_000_000.5]))
    assert ring.scale is None and ring.buf.dtype == np.float64
    assert ring.values().tolist() == [3.0, -7.0, 0.125, 3_000_000.5]
    with pytest.raises(ValueError, match="cannot take"):
        ring.extend(np.zeros(7))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_reference_of_few_decimals_fills_in_four_bytes_a_value(name: str) -> None:
    spec = SPECS[name]
    rng = np.random.default_rng(5)
    few = build_detector(spec)
    # Past one block (DECIMAL_BLOCK, 512 values), coded; the rest waits as float64.
    few.update_many(_values("decimal", 4, rng, 550))
    ring = few._reference.ring  # type: ignore[attr-defined]
    assert isinstance(ring, DecimalRing) and 0 < ring.count < ring.size
    assert ring.buf.itemsize == 4 and ring.coded == DECIMAL_BLOCK
    full = build_detector(spec)
    full.update_many(_values("full", 0, rng, 550))
    assert full._reference.ring.buf.itemsize == 8  # type: ignore[attr-defined]
    # Once full, the reference is derived from float64 values and released as before.
    few.update_many(_values("decimal", 4, rng, 1000))
    assert few._reference.ready and few._reference.ring.size == 0  # type: ignore[attr-defined]


def test_the_streams_make_the_detectors_breach() -> None:
    """The equivalence above is over streams that move the verdicts, not only 'ok'."""
    for name, spec in SPECS.items():
        detector = build_detector(spec)
        seen = {
            detector.update_many(chunk).verdict.value
            for chunk in _chunks(_values("decimal", 3, np.random.default_rng(3), 5000), [37])
        }
        assert seen - {"ok", "inconclusive"}, f"{name} never breached: {seen}"


#: Ways a filling reference's saved values can disagree with its saved count (a checkpoint
#: is hostile input): each is refused when restored, not left to fail on the next update.
_BROKEN_FILLS: dict[str, Any] = {
    "count past the values": lambda ring: ring.__setitem__("count", ring["count"] + 100),
    "count short of the values": lambda ring: ring.__setitem__("count", ring["count"] - 100),
    "count of a full reference": lambda ring: ring.__setitem__("count", 1500),
    "negative count": lambda ring: ring.__setitem__("count", -5),
    "values past the size": lambda ring: ring.__setitem__("buf", np.arange(2000.0)),
    "size values, count short": lambda ring: ring.__setitem__("buf", np.arange(1500.0)),
    "values as a matrix": lambda ring: ring.__setitem__("buf", np.arange(700.0).reshape(7, 100)),
    "one number": lambda ring: ring.__setitem__("buf", 3.0),
}


@pytest.mark.parametrize("broken", sorted(_BROKEN_FILLS))
def test_a_filling_reference_checkpoint_that_disagrees_with_itself_is_refused(
    broken: str,
) -> None:
    from detectors.serialization import StateError, pack, unpack

    spec = SPECS["ks_window"]
    values = _values("decimal", 2, np.random.default_rng(3), 700)
    detector = build_detector(spec, seed=0)
    detector.update_many(values)
    raw = unpack(detector.to_bytes())
    _BROKEN_FILLS[broken](raw["state"]["reference"]["ring"])
    with pytest.raises(StateError, match="reference"):
        restore_detector(pack(raw))
    # The checkpoint as written still restores, and goes on as the detector does.
    twin = restore_detector(detector.to_bytes())
    assert bits(twin.update_many(values[:100])) == bits(detector.update_many(values[:100]))


def _mappings() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def test_filling_references_of_a_large_fleet_take_few_kernel_mappings() -> None:
    """Each filling ``DecimalRing`` maps its buffers (codes, waiting values) apart from the
    heap; were each its own kernel mapping, 2,500 models (27 filling buffers a model under
    the auto policy, measured) would pass Linux's default limit of 65,530 mappings a process
    (``vm.max_map_count``), past which every mmap fails: Python's arenas, thread stacks.
    Adjacent private anonymous mappings merge into one."""
    before = _mappings()
    rings = [DecimalRing(1500) for _ in range(4000)]
    for ring in rings:
        ring.extend(np.full(DECIMAL_BLOCK + 3, 1.25))  # pages written, a block coded
    assert _mappings() - before < 1000
    assert all(ring.values()[-1] == 1.25 and ring.buf.itemsize == 4 for ring in rings)
