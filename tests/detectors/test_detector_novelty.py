"""novelty_rate on real sensor data (River's bundled Statlog Shuttle readings): quiet on i.i.d.
traffic, catches a 7% influx of a sub-population the reference barely holds, restores exactly,
and refuses hostile input clearly."""

from __future__ import annotations

import csv
import gzip
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import river.datasets
from pydantic import ValidationError

from detectors import Verdict, build_detector, parse_spec, restore_detector
from detectors.novelty import NoveltyRateDetector, NoveltyRateSpec

BASE_SHARE = 0.002


@pytest.fixture(scope="module")
def shuttle() -> tuple[np.ndarray, np.ndarray]:
    """(majority rows, rare-class rows): 9 integer sensor readings, read from the wheel."""
    path = Path(river.datasets.__file__).parent / "shuttle.csv.gz"
    with gzip.open(path, "rt") as fh:
        table = np.array([[float(v) for v in r] for r in list(csv.reader(fh))[1:]])
    return table[table[:, -1] == 0, :-1], table[table[:, -1] == 1, :-1]


def _traffic(
    data: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, n: int, share: float
) -> np.ndarray:
    normal, rare = data
    rows = normal[rng.integers(0, normal.shape[0], size=n)]
    new = rng.random(n) < share
    rows[new] = rare[rng.integers(0, rare.shape[0], size=int(new.sum()))]
    return rows


def _readings(det: Any, rows: np.ndarray) -> list[Any]:
    return [det.update_many(rows[i : i + 100]) for i in range(0, rows.shape[0], 100)]


def test_shuttle_readings_are_integer_tied_and_multimodal(shuttle: Any) -> None:
    normal, _ = shuttle
    assert np.array_equal(normal, np.round(normal))
    # Heavy ties: every feature takes fewer than 300 distinct values over 45,000 rows.
    assert max(np.unique(column).size for column in normal.T) < 300


def test_novelty_rate_catches_a_seven_percent_influx_within_2000_events(shuttle: Any) -> None:
    rng = np.random.default_rng(7)
    det = build_detector(NoveltyRateSpec(), seed=7)
    before = _readings(det, _traffic(shuttle, rng, 15_000, BASE_SHARE))
    assert not any(r.breached for r in before)
    after = _readings(det, _traffic(shuttle, rng, 5_000, 0.07))
    first = next(i for i, r in enumerate(after) if r.breached)
    assert (first + 1) * 100 <= 2000
    assert (first + 1) * 100 == 600
    assert after[first].verdict is Verdict.ANOMALY


def test_novelty_rate_is_quiet_on_iid_sensor_traffic(shuttle: Any) -> None:
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        det = build_detector(NoveltyRateSpec(), seed=seed)
        readings = _readings(det, _traffic(shuttle, rng, 60_000, BASE_SHARE))
        assert not any(r.breached for r in readings)
        assert sum(r.verdict is Verdict.OK for r in readings) > 400


def _same(a: Any, b: Any) -> bool:
    fa = [a.statistic, a.effect, a.samples, a.threshold, list(Verdict).index(a.verdict)]
    fb = [b.statistic, b.effect, b.samples, b.threshold, list(Verdict).index(b.verdict)]
    return bool(np.array_equal(np.array(fa), np.array(fb), equal_nan=True))


def test_novelty_rate_state_round_trips(shuttle: Any) -> None:
    rng = np.random.default_rng(3)
    rows = np.concatenate(
        [_traffic(shuttle, rng, 6_000, BASE_SHARE), _traffic(shuttle, rng, 3_000, 0.1)]
    )
    spec = NoveltyRateSpec(reference={"size": 4000})
    for cut in (2_000, 4_550, 6_250):
        det = build_detector(spec, seed=3)
        det.update_many(rows[:cut])
        twin = restore_detector(det.to_bytes())
        assert isinstance(twin, NoveltyRateDetector)
        assert _same(twin.reading(), det.reading())
        for start in range(cut, rows.shape[0], 100):
            assert _same(
                det.update_many(rows[start : start + 100]),
                twin.update_many(rows[start : start + 100]),
            )
        assert det.reading().verdict is Verdict.ANOMALY


def test_novelty_rate_drops_nan_rows_and_clamps_infinities(shuttle: Any) -> None:
    rng = np.random.default_rng(4)
    det = build_detector(NoveltyRateSpec(reference={"size": 2000}))
    rows = _traffic(shuttle, rng, 6_000, BASE_SHARE)
    rows[::20, 4] = np.nan
    rows[101, 0] = np.inf
    reading = det.update_many(rows)
    assert det.dropped == 300  # type: ignore[attr-defined]
    assert det.extremes.infinite == 1  # type: ignore[attr-defined]
    assert math.isfinite(reading.statistic) and not reading.breached


def test_novelty_rate_handles_one_feature_and_constant_features() -> None:
    rng = np.random.default_rng(5)
    one = build_detector(NoveltyRateSpec(reference={"size": 2000}, bank_size=200))
    modes = rng.choice([0.0, 10.0, 20.0], size=6_000)[:, None] + rng.poisson(1.0, size=(6_000, 1))
    assert one.update_many(modes).verdict is Verdict.OK
    assert one.update_many(np.full((1_500, 1), 50.0)).verdict is Verdict.ANOMALY
    flat = build_detector(NoveltyRateSpec(reference={"size": 2000}, bank_size=200))
    rows = np.column_stack([modes[:, 0], np.full(6_000, 3.0)])
    quiet = flat.update_many(rows)
    assert quiet.verdict is Verdict.OK and math.isfinite(quiet.statistic)
    moved = np.column_stack([modes[:1_500, 0], np.full(1_500, 4.0)])
    assert flat.update_many(moved).verdict is Verdict.ANOMALY


def test_novelty_rate_on_all_tied_reference_stays_finite() -> None:
    det = build_detector(NoveltyRateSpec(reference={"size": 1000}, bank_size=100))
    reading = det.update_many(np.ones((3_000, 3)))
    # Every reference distance is 0: the cut is 0 and nothing is above it.
    assert reading.verdict is Verdict.OK and reading.statistic == 0.0


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.zeros((2, 2, 2)), "needs a 2-D array"),
        (np.zeros((10, 101)), "max_features is 100"),
    ],
)
def test_novelty_rate_refuses_input_it_cannot_model(rows: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_detector(NoveltyRateSpec()).update_many(rows)


def test_novelty_rate_refuses_a_feature_that_disappears() -> None:
    det = build_detector(NoveltyRateSpec(reference={"size": 100}, bank_size=50))
    det.update_many(np.zeros((10, 4)))
    with pytest.raises(ValueError, match="rows of 3 features, its reference has 4"):
        det.update_many(np.zeros((10, 3)))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"reference": {"mode": "rolling"}}, "reference mode 'fixed'"),
        ({"k": 50, "bank_size": 50}, "k must be smaller than bank_size"),
        ({"score_quantile": 0.3}, "greater than 0.5"),
        ({"bank_size": 10}, "greater than or equal to 20"),
    ],
)
def test_novelty_rate_spec_errors_name_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_spec({"type": "novelty_rate", **raw})
