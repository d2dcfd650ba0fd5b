"""Extreme values cannot blind a numeric detector (detectors/extremes.py's rule).

Every numeric detector type gets extremes of several magnitudes (a million times the signal's
scale, 1e12, +-1.7976931348623157e308, +-inf, NaN) in its reference phase and in its
monitored phase: it must stay quiet on the stationary stream, and still catch a later +2 sigma
shift within a bound near its clean delay. ``delay_after_extremes`` is also what the delay
table of the report is measured with (``python -m tests.detectors.test_detector_extremes``).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import pytest

from detectors import StateError, build_detector, parse_spec, restore_detector
from detectors.extremes import MAGNITUDE_LIMIT, UNBOUNDED, ExtremeCounts, Fence
from detectors.serialization import pack, unpack
from detectors.window import drop_nan

MAX = 1.7976931348623157e308
#: name -> the extreme in units of the signal: "scale" ones are multiplied by the scale.
MAGNITUDES: dict[str, tuple[float, bool]] = {
    "1e6 x scale": (1e6, True),
    "1e12": (1e12, False),
    "+1.797e308": (MAX, False),
    "-1.797e308": (-MAX, False),
    "+inf": (math.inf, False),
    "-inf": (-math.inf, False),
    "nan": (math.nan, False),
}
NUMERIC_TYPES = [
    "ks_window",
    "adwin",
    "page_hinkley",
    "quantile",
    "quantile_slo",
    "half_space_trees",
]
REFERENCE = 2000
#: The stationary stream runs this long before the shift (reference, then monitored phase).
SHIFT_AT = 12_000
AFTER = 6000
BATCH = 100
#: Reference-phase extremes sit here, monitored-phase ones this long before the shift
#: (so they are inside every detector's window when the shift starts: the worst case).
IN_REFERENCE = (300, 900, 1500)
BEFORE_SHIFT = 150
#: Latency signals: lognormal around 100 ms, sigma 0.3 in log space; the SLO is p99 <= 300 ms.
LATENCY_MEDIAN, LATENCY_SIGMA, SLO_MS = 100.0, 0.3, 300.0


def _spec(kind: str) -> Any:
    if kind == "quantile_slo":
        return parse_spec({"type": "quantile", "q": 0.99, "threshold": SLO_MS})
    # half_space_trees keeps its default forest: smaller trees score a shifted cluster, once
    # clipped into a corner of the unit cube, as less anomalous than the reference.
    return parse_spec({"type": kind, "reference": {"size": REFERENCE}})


def _latency(kind: str) -> bool:
    return kind.startswith("quantile")


def _stream(kind: str, seed: int) -> np.ndarray:
    """The stationary stream, then a +2 sigma shift (in log space for latencies, of every
    feature for half_space_trees)."""
    rng = np.random.default_rng(seed)
    n = SHIFT_AT + AFTER
    shift = np.where(np.arange(n) >= SHIFT_AT, 2.0, 0.0)
    if kind == "half_space_trees":
        return rng.normal(size=(n, 3)) + shift[:, None]
    z = rng.normal(size=n) + shift
    if _latency(kind):
        return np.asarray(LATENCY_MEDIAN * np.exp(LATENCY_SIGMA * z))
    return z


def _extreme(kind: str, magnitude: str) -> float:
    value, scaled = MAGNITUDES[magnitude]
    scale = LATENCY_MEDIAN if _latency(kind) else 1.0
    return value * scale if scaled else value


def _inject(kind: str, stream: np.ndarray, at: list[int], value: float) -> np.ndarray:
    out = stream.copy()
    for i in at:
        if out.ndim == 2:
            out[i, i % out.shape[1]] = value
        else:
            out[i] = value
    return out


def _alarms(kind: str, stream: np.ndarray, seed: int) -> list[int]:
    """The event counts at which the detector's verdict turns breached."""
    det = build_detector(_spec(kind), seed=seed)
    starts = []
    was = False
    for i in range(0, len(stream), BATCH):
        breached = det.update_many(stream[i : i + BATCH]).breached
        if breached and not was:
            starts.append(i + BATCH)
        was = breached
    return starts


def delay_after_extremes(
    kind: str, magnitudes: list[str], phases: list[str], seed: int = 0
) -> tuple[list[int], int | None]:
    """(alarms before the shift, delay of the first alarm after it) with the extremes in."""
    stream = _stream(kind, seed)
    for magnitude in magnitudes:
        value = _extreme(kind, magnitude)
        offset = list(MAGNITUDES).index(magnitude)
        at: list[int] = []
        if "reference" in phases:
            at += [i + offset for i in IN_REFERENCE]
        if "monitored" in phases:
            at += [SHIFT_AT - BEFORE_SHIFT - 10 * offset, SHIFT_AT // 2 + 10 * offset]
        stream = _inject(kind, stream, at, value)
    alarms = _alarms(kind, stream, seed)
    before = [a for a in alarms if a <= SHIFT_AT]
    after = [a - SHIFT_AT for a in alarms if a > SHIFT_AT]
    return before, (after[0] if after else None)


@pytest.mark.parametrize("kind", NUMERIC_TYPES)
def test_extremes_in_both_phases_neither_alarm_nor_hide_a_later_shift(kind: str) -> None:
    _, clean = delay_after_extremes(kind, [], [])
    assert clean is not None, "the +2 sigma shift must be caught on the clean stream"
    before, delay = delay_after_extremes(kind, list(MAGNITUDES), ["reference", "monitored"])
    assert before == [], f"{kind}: alarms on the stationary stream with only extremes"
    assert delay is not None, f"{kind}: the shift after the extremes was never caught"
    # A few hundred events more than clean at most: the extremes sit in the window.
    assert delay <= clean + 500, (kind, delay, clean)


@pytest.mark.parametrize("kind", NUMERIC_TYPES)
@pytest.mark.parametrize("magnitude", ["1e12", "+1.797e308", "-1.797e308"])
def test_each_magnitude_alone_in_the_reference_leaves_the_detector_seeing(
    kind: str, magnitude: str
) -> None:
    _, clean = delay_after_extremes(kind, [], [])
    before, delay = delay_after_extremes(kind, [magnitude], ["reference"])
    assert before == []
    assert delay is not None and clean is not None and delay <= clean + 500, (delay, clean)


@pytest.mark.parametrize("kind", ["ks_window", "adwin", "page_hinkley", "quantile"])
def test_a_rolling_reference_with_extremes_still_sees_a_shift(kind: str) -> None:
    # A rolling reference is fenced at its first refresh; the window then held values that
    # came before any fence, and is clipped with it.
    spec = parse_spec({"type": kind, "reference": {"mode": "rolling", "size": REFERENCE}})
    stream = _stream(kind, 4)
    for offset, magnitude in enumerate(MAGNITUDES):
        stream = _inject(
            kind, stream, [200 + offset, 2600 + offset, 7000 + offset], _extreme(kind, magnitude)
        )
    det = build_detector(spec)
    readings = [det.update_many(stream[i : i + BATCH]) for i in range(0, len(stream), BATCH)]
    breached = [(i + 1) * BATCH for i, r in enumerate(readings) if r.breached]
    assert not [b for b in breached if b <= SHIFT_AT], breached
    assert breached and breached[0] - SHIFT_AT <= 1500, breached
    assert det.extremes.infinite == 6


def test_the_latency_slo_still_breaches_on_huge_latencies() -> None:
    # Huge but finite latencies are huge: clamped at 1e150 ms, far above the SLO.
    det = build_detector(_spec("quantile_slo"))
    rng = np.random.default_rng(3)
    assert not det.update_many(rng.lognormal(math.log(100), 0.3, 2000)).breached
    huge = np.full(1000, MAX)
    reading = det.update_many(huge)
    assert reading.breached and reading.statistic == MAGNITUDE_LIMIT
    # The relative quantile's fence lies above its limit: clipped values still count above.
    rel = build_detector(_spec("quantile"))
    rel.update_many(rng.lognormal(math.log(100), 0.3, 4000))
    assert rel.update_many(np.full(1000, 1e12)).breached
    assert rel.extremes.clipped == 1000


@pytest.mark.parametrize("kind", ["ks_window", "adwin", "page_hinkley", "quantile"])
def test_a_ready_reference_with_extremes_gives_the_clean_reference_statistics(kind: str) -> None:
    rng = np.random.default_rng(5)
    clean = rng.normal(size=REFERENCE)
    dirty = clean.copy()
    dirty[[10, 20, 30, 40]] = [1e12, MAX, -MAX, 1e6]
    dirty = np.concatenate([dirty, [math.inf, -math.inf, math.nan]])
    a, b = build_detector(_spec(kind)), build_detector(_spec(kind))
    a.update_many(clean)
    b.update_many(dirty)
    # Four in the reference, two (the infinities) in the window; NaN is missing, not clipped.
    assert b.extremes == ExtremeCounts(infinite=2, clipped=6)
    ref_a, ref_b = a._extra_state()["ref"], b._extra_state()["ref"]
    assert all(math.isfinite(v) for v in ref_b)
    # (mean, std), or (p99, limit): the four values are left out, as if four normal values
    # were missing: a few thousandths of a std.
    assert ref_b[:2] == pytest.approx(ref_a[:2], abs=0.01)
    if kind == "quantile":
        # The reference share above the limit does not count them either.
        assert ref_b[2] <= ref_a[2]


def test_fence_and_counts_survive_a_checkpoint() -> None:
    det = build_detector(_spec("ks_window"))
    rng = np.random.default_rng(9)
    det.update_many(rng.normal(size=REFERENCE))
    det.update_many(np.array([1e12, math.inf, 0.5]))
    restored = restore_detector(det.to_bytes())
    assert restored.extremes == det.extremes == ExtremeCounts(infinite=1, clipped=2)
    assert restored._fence is not None and det._fence is not None
    assert restored._fence.to_list() == det._fence.to_list()
    tail = rng.normal(size=3000)
    tail[100] = -MAX
    assert restored.update_many(tail) == det.update_many(tail)


def test_a_checkpoint_from_before_the_rule_still_clamps() -> None:
    det = build_detector(_spec("ks_window"))
    det.update_many(np.random.default_rng(2).normal(size=REFERENCE))
    raw = unpack(det.to_bytes())
    del raw["state"]["fence"], raw["state"]["extremes"]
    restored = restore_detector(pack(raw))
    restored.update_many(np.array([math.inf, 1.0]))
    assert restored._window.values().tolist() == [MAGNITUDE_LIMIT, 1.0]
    assert restored.extremes == ExtremeCounts(infinite=1, clipped=1)


@pytest.mark.parametrize("fence", [[1.0, 0.0], [math.nan, 1.0], [0.0], "x"])
def test_a_checkpoint_with_a_bad_fence_is_a_state_error(fence: Any) -> None:
    det = build_detector(_spec("ks_window"))
    det.update_many(np.random.default_rng(1).normal(size=REFERENCE))
    raw = unpack(det.to_bytes())
    raw["state"]["fence"] = fence
    with pytest.raises(StateError, match="invalid fence"):
        restore_detector(pack(raw))


def test_half_space_trees_relearns_a_reference_that_held_an_extreme() -> None:
    rng = np.random.default_rng(11)
    rows = rng.normal(size=(REFERENCE, 3))
    dirty = rows.copy()
    dirty[700, 1] = MAX
    clean_det = build_detector(_spec("half_space_trees"), seed=2)
    dirty_det = build_detector(_spec("half_space_trees"), seed=2)
    for i in range(0, REFERENCE, BATCH):
        clean_det.update_many(rows[i : i + BATCH])
        dirty_det.update_many(dirty[i : i + BATCH])
    assert dirty_det.extremes.clipped == 1
    # The frozen ranges are the clean reference's without that one value: it is scored at
    # its fence (about 23 std out) but stretches no range.
    lo, hi = dirty_det._fence_lo, dirty_det._fence_hi
    assert lo is not None and hi is not None and 15 < hi[1] < 40
    kept = [rows[:, 0], np.delete(rows[:, 1], 700), rows[:, 2]]
    assert dirty_det._hi.tolist() == [float(c.max()) for c in kept]
    assert dirty_det._lo.tolist() == [float(c.min()) for c in kept]
    assert clean_det._lo.tolist() == rows.min(axis=0).tolist()


@pytest.mark.parametrize(
    "values",
    [
        [math.nan] * 5,
        [math.inf, -math.inf],
        [MAX, -MAX, MAX],
        [1e200] * 3,
        [0.0, -0.0, 5e-324],
    ],
)
def test_admitted_values_are_never_non_finite_nor_overflow(values: list[float]) -> None:
    counts = ExtremeCounts()
    out = UNBOUNDED.admit(drop_nan(np.array(values)), counts)
    assert np.isfinite(out).all()
    assert math.isfinite(float(out @ out))
    assert counts.infinite == sum(math.isinf(v) for v in values)
    assert counts.clipped == sum(math.isinf(v) or abs(v) > MAGNITUDE_LIMIT for v in values)


@pytest.mark.parametrize(
    "reference",
    [
        np.zeros(500),
        np.full(500, 1e149),
        np.full(500, -7.5),
        np.r_[np.zeros(499), 1.0],
        np.r_[np.zeros(250), np.full(250, MAGNITUDE_LIMIT)],
    ],
)
def test_a_degenerate_reference_still_makes_a_finite_open_fence(reference: np.ndarray) -> None:
    fence = Fence.of(reference)
    assert fence.lo < float(np.median(reference)) < fence.hi
    assert math.isfinite(fence.lo) and math.isfinite(fence.hi)


def test_a_bad_fence_is_refused_with_both_edges() -> None:
    with pytest.raises(ValueError, match=r"lo=nan, hi=1\.0"):
        Fence(math.nan, 1.0)
    with pytest.raises(ValueError, match=r"lo=2\.0, hi=1\.0"):
        Fence(2.0, 1.0)


def _table(seeds: int) -> None:  # pragma: no cover - the report's measurement
    print("| detector | magnitude | phase | median delay (events) | alarms before | clean delay |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for kind in NUMERIC_TYPES:
        clean = [delay_after_extremes(kind, [], [], seed)[1] for seed in range(seeds)]
        for magnitude in [*MAGNITUDES, "all at once"]:
            for phase in ("reference", "monitored"):
                chosen = list(MAGNITUDES) if magnitude == "all at once" else [magnitude]
                runs = [delay_after_extremes(kind, chosen, [phase], s) for s in range(seeds)]
                delays = [d for _, d in runs]
                shown = "missed" if None in delays else str(int(np.median(delays)))  # type: ignore[arg-type]
                false = sum(len(b) for b, _ in runs)
                print(
                    f"| `{kind}` | {magnitude} | {phase} | {shown} | {false} | "
                    f"{int(np.median(clean))} |"  # type: ignore[arg-type]
                )


if __name__ == "__main__":  # pragma: no cover
    _table(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
