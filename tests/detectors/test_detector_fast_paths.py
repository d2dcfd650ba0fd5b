"""The per-call shortcuts of the detectors compute exactly what the general code does: the
cheap statistics equal numpy's, cached KS ranks equal a fresh search, and calls that end no
stride hand back the last Reading itself."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

from detectors import InputKind, Verdict, build_detector, parse_spec, restore_detector
from detectors.calibration import (
    g_statistic,
    g_statistic_2x2,
    ks_statistic,
    ks_statistic_ranked,
)
from detectors.quantile import linear_quantile
from detectors.registry import TYPES
from detectors.window import Ring


def test_ks_statistic_from_ranks_equals_the_sorted_search_with_and_without_ties() -> None:
    rng = np.random.default_rng(11)
    for trial in range(400):
        n, m = (int(k) for k in rng.integers(1, 400, 2))
        if trial % 2:
            window, ref = rng.integers(0, 15, n).astype(float), rng.integers(0, 15, m) * 1.0
        else:
            window, ref = rng.normal(size=n), rng.normal(0.2, 1.0, m)
        ref = np.sort(ref)
        upto = np.searchsorted(ref, window, side="right")
        below = np.searchsorted(ref, window, side="left")
        assert ks_statistic_ranked(upto, below, m) == ks_statistic(np.sort(window), ref)


def test_two_by_two_g_statistic_equals_the_general_one_bit_for_bit() -> None:
    rng = np.random.default_rng(12)
    for _ in range(5000):
        n, m = int(rng.integers(1, 3000)), int(rng.integers(1, 20_000))
        a, c = float(rng.integers(0, n + 1)), float(rng.integers(0, m + 1))
        general = g_statistic(np.array([a, n - a]), np.array([c, m - c]))
        assert g_statistic_2x2(a, n - a, c, m - c) == general
    assert g_statistic_2x2(0.0, 0.0, 0.0, 0.0) == 0.0


def test_linear_quantile_equals_numpy_quantile_bit_for_bit() -> None:
    rng = np.random.default_rng(13)
    for trial in range(2000):
        n = int(rng.integers(1, 1200))
        values = rng.lognormal(size=n) if trial % 2 else rng.integers(0, 9, n) * 1.0
        q = float(rng.choice([0.5, 0.9, 0.99, 0.999, rng.random()]))
        assert linear_quantile(values, q) == float(np.quantile(values, q))


@pytest.mark.parametrize(("start", "pushes"), [(0, [3, 4, 2]), (5, [7]), (9, [1, 10, 25])])
def test_ring_evicts_the_oldest_values_in_order_across_the_wrap(
    start: int, pushes: list[int]
) -> None:
    ring = Ring(10)
    ring.extend(np.arange(start, dtype=np.float64))
    held: list[float] = [float(v) for v in range(start)]
    nxt = start
    for k in pushes:
        values = np.arange(nxt, nxt + k, dtype=np.float64)
        nxt += k
        held += values.tolist()
        expected = held[: max(0, len(held) - 10)]
        held = held[len(expected) :]
        assert ring.extend(values).tolist() == expected
        assert ring.ordered().tolist() == held


def _drifting(n: int, rng: np.random.Generator, *, discrete: bool) -> np.ndarray:
    values = np.r_[rng.normal(size=n // 2), rng.normal(0.5, 1.3, n - n // 2)]
    if discrete:
        values = np.round(values * 2.0)
    values[rng.choice(n, n // 40)] = np.nan
    out: np.ndarray = values
    return out


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("mode", ["fixed", "rolling"])
def test_ks_window_with_cached_ranks_matches_a_freshly_restored_copy_every_batch(
    discrete: bool, mode: str
) -> None:
    # A restored detector searches all its window values again; the running one only the
    # new ones. Odd batch sizes move the window's write position across the wrap.
    spec = parse_spec(
        {"type": "ks_window", "window": 300, "reference": {"size": 500, "mode": mode}}
    )
    rng = np.random.default_rng(14)
    values = _drifting(8000, rng, discrete=discrete)
    det = build_detector(spec)
    sizes = rng.choice([1, 7, 18, 61, 100, 250, 333], size=400)
    i = 0
    verdicts = set()
    for size in sizes.tolist():
        batch = values[i : i + size]
        i += size
        copy = restore_detector(det.to_bytes())
        got, fresh = det.update_many(batch), copy.update_many(batch)
        assert got == fresh or (got.verdict is fresh.verdict is Verdict.INCONCLUSIVE)
        verdicts.add(got.verdict)
        if i >= values.size:
            break
    assert Verdict.OK in verdicts


@pytest.mark.parametrize("kind", ["ks_window", "psi", "quantile", "rate_window"])
def test_call_that_ends_no_stride_hands_back_the_last_reading_object(kind: str) -> None:
    rng = np.random.default_rng(15)
    det = build_detector(parse_spec({"type": kind, "reference": {"size": 1000}}))
    values: Any
    if kind == "psi":
        values = list(rng.choice(np.array(["a", "b", "c"]), 3000))
    elif kind == "rate_window":
        values = (rng.random(3000) < 0.05).astype(np.float64)
    else:
        values = rng.lognormal(size=3000)
    tested = det.update_many(values[:2000])  # 2000 values: the last one ends a stride
    assert tested.verdict is Verdict.OK
    assert det.update_many(values[2000:2018]) is tested
    assert det.update_many(values[2018:2050]) is tested


def test_filling_reference_reports_one_inconclusive_reading_object() -> None:
    det = build_detector(parse_spec({"type": "ks_window", "reference": {"size": 1000}}))
    first = det.update_many(np.ones(18))
    assert first.verdict is Verdict.INCONCLUSIVE and first.samples == 0
    assert det.update_many(np.ones(18)) is first


def _stream(kind: str, rng: np.random.Generator, n: int) -> Any:
    """Values for ``kind`` that change half way, with a few missing ones."""
    half = n // 2
    input_kind = parse_spec({"type": kind}).input_kind
    if input_kind is InputKind.CATEGORICAL:
        before = rng.choice(np.array(["a", "b", "c", "d"]), half, p=[0.4, 0.3, 0.2, 0.1])
        after = rng.choice(np.array(["a", "b", "c", "e"]), n - half)
        out: list[Any] = [*before.tolist(), *after.tolist()]
        for i in rng.choice(n, n // 50).tolist():
            out[i] = None
        return out
    if input_kind is InputKind.BINARY:
        return np.r_[rng.random(half) < 0.02, rng.random(n - half) < 0.2].astype(np.float64)
    if input_kind is InputKind.MULTIVARIATE:
        return np.r_[rng.random((half, 3)), rng.random((n - half, 3)) * 0.3 + 0.7]
    return _drifting(n, rng, discrete=False)


@pytest.mark.parametrize("kind", TYPES)
def test_saving_state_changes_nothing(kind: str) -> None:
    # A twin that saves its state after every call (a checkpoint at any moment) sees every
    # Reading of one that never saves, ends in the same state, and a copy restored from any
    # save continues the same way.
    spec = parse_spec({"type": kind, "window": 300, "reference": {"size": 400}})
    rng = np.random.default_rng(16)
    values = _stream(kind, rng, 6000)
    saving, plain = build_detector(spec), build_detector(spec)
    sizes = rng.choice([1, 5, 18, 37, 99, 100, 260], size=600).tolist()
    i = 0
    verdicts = set()
    restored = None
    for step, size in enumerate(sizes):
        batch = values[i : i + size]
        if len(batch) == 0:
            break
        i += size
        got = saving.update_many(batch)
        want = plain.update_many(batch)
        before = pickle.dumps(saving)
        saved = saving.to_bytes()
        assert pickle.dumps(saving) == before, "saving changed the detector"
        if restored is not None:
            restored.update_many(batch)
        if step == 40:
            restored = restore_detector(saved)
        assert got == want or (got.verdict is want.verdict is Verdict.INCONCLUSIVE)
        verdicts.add(got.verdict)
    assert restored is not None
    assert saving.to_bytes() == plain.to_bytes() == restored.to_bytes()
    assert verdicts & {Verdict.DRIFT, Verdict.ANOMALY, Verdict.OK}
