"""Every detector: quiet on stationary data, catches a clear shift, restores exactly from
bytes, reports inconclusive readings, and honours its family correction."""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import pytest

from detectors import (
    InputKind,
    KSWindowSpec,
    RateWindowSpec,
    StateError,
    Verdict,
    build_detector,
    parse_spec,
    restore_detector,
)
from detectors.registry import _SPEC_ADAPTER, TYPES

#: Every registered detector type: a new one is tested here without editing this file.
ALL_TYPES = list(TYPES)

CATS = np.array([f"c{i}" for i in range(8)])
P_BEFORE = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05, 0.05])


def _spec(kind: str) -> Any:
    raw: dict[str, Any] = {"type": kind, "reference": {"size": 2000}}
    if kind == "half_space_trees":
        raw.update(n_trees=5, height=6, reference={"size": 1000})
    return parse_spec(raw)


def _stream(kind: str, n: int, rng: np.random.Generator, *, shifted: bool) -> Any:
    input_kind = _spec(kind).input_kind
    if input_kind is InputKind.NUMERIC:
        if kind == "quantile":
            return rng.lognormal(math.log(100), 0.6 if shifted else 0.3, n)
        return rng.normal(2.0 if shifted else 0.0, 1.0, n)
    if input_kind is InputKind.BINARY:
        return (rng.random(n) < (0.2 if shifted else 0.02)).astype(np.float64)
    if input_kind is InputKind.CATEGORICAL:
        if kind == "unseen_rate" and shifted:
            return list(rng.choice(np.array(["new1", "new2", "c0"]), n))
        return list(rng.choice(CATS, n, p=P_BEFORE[::-1] if shifted else P_BEFORE))
    return rng.normal(4.0 if shifted else 0.0, 1.0, (n, 3))


def _feed(det: Any, values: Any, batch: int = 100) -> list[Any]:
    return [det.update_many(values[i : i + batch]) for i in range(0, len(values), batch)]


def _quiet_n(kind: str) -> int:
    return 4000 if kind == "half_space_trees" else 30_000


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_detector_stays_quiet_on_stationary_data_then_catches_a_clear_shift(kind: str) -> None:
    rng = np.random.default_rng(42)
    det = build_detector(_spec(kind), seed=1)
    quiet = _feed(det, _stream(kind, _quiet_n(kind), rng, shifted=False))
    assert not any(r.breached for r in quiet)
    assert quiet[-1].verdict is Verdict.OK
    loud = _feed(det, _stream(kind, 5000, rng, shifted=True))
    assert any(r.breached for r in loud), loud[-1]


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_restored_detector_continues_with_identical_readings(kind: str) -> None:
    rng = np.random.default_rng(7)
    det = build_detector(_spec(kind), family_size=3, seed=5)
    _feed(det, _stream(kind, 2500, rng, shifted=False))
    data = det.to_bytes()
    clone = restore_detector(data)
    assert clone.reading() == det.reading() or math.isnan(det.reading().statistic)
    tail = _stream(kind, 1500, rng, shifted=False)
    tail = (
        tail + _stream(kind, 1500, rng, shifted=True)
        if isinstance(tail, list)
        else (np.concatenate([tail, _stream(kind, 1500, rng, shifted=True)]))
    )
    assert _feed(det, tail, 70) == _feed(clone, tail, 70)
    assert clone.to_bytes() == det.to_bytes()


@pytest.mark.parametrize("kind", [k for k in ALL_TYPES if k != "half_space_trees"])
def test_checkpoint_size_is_bounded_by_configuration_not_traffic(kind: str) -> None:
    rng = np.random.default_rng(3)
    det = build_detector(_spec(kind))
    _feed(det, _stream(kind, 5000, rng, shifted=False), 1000)
    early = len(det.to_bytes())
    _feed(det, _stream(kind, 40_000, rng, shifted=False), 1000)
    assert len(det.to_bytes()) <= early * 1.1 + 4096


def test_batch_and_single_updates_reach_the_same_verdicts() -> None:
    rng = np.random.default_rng(11)
    values = np.r_[rng.normal(size=3000), rng.normal(1.5, 1, 1500)]
    spec = KSWindowSpec(reference={"size": 1000}, window=500, stride=50)
    batched, single = build_detector(spec), build_detector(spec)
    batched.update_many(values)
    for v in values:
        single.update(float(v))
    assert batched.reading() == single.reading()
    assert batched.reading().verdict is Verdict.DRIFT


def test_nan_or_empty_batch_is_inconclusive_not_a_pass() -> None:
    det = build_detector(RateWindowSpec(threshold=0.5, window=100, min_samples=50))
    assert det.update_many(np.zeros(100)).verdict is Verdict.OK
    reading = det.update_many(np.array([np.nan, np.nan]))
    assert reading.verdict is Verdict.INCONCLUSIVE
    assert det.update_many(np.array([])).verdict is Verdict.INCONCLUSIVE
    assert det.update(math.nan).verdict is Verdict.INCONCLUSIVE


def test_no_verdict_before_min_samples() -> None:
    det = build_detector(RateWindowSpec(threshold=0.1, window=1000, min_samples=300, stride=100))
    readings = _feed(det, np.ones(400))
    assert [r.verdict for r in readings[:2]] == [Verdict.INCONCLUSIVE] * 2
    assert readings[1].samples == 200
    assert readings[2].verdict is Verdict.OK  # breach seen, persistence not yet met


def test_fixed_reference_withholds_verdicts_until_it_is_full() -> None:
    det = build_detector(KSWindowSpec(reference={"size": 5000}))
    readings = _feed(det, np.random.default_rng(0).normal(size=5500))
    assert all(r.verdict is Verdict.INCONCLUSIVE for r in readings[:51])
    assert readings[-1].verdict is Verdict.OK


def test_family_size_tightens_the_critical_value() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(size=12_000)
    single = build_detector(KSWindowSpec())
    family = build_detector(KSWindowSpec(), family_size=100)
    assert family.update_many(values).threshold > single.update_many(values).threshold


def test_autocorrelated_wander_does_not_alarm_but_an_iid_shift_does() -> None:
    rng = np.random.default_rng(4)
    rho = 0.99
    noise = rng.normal(size=200_000) * math.sqrt(1 - rho**2)
    x = np.empty_like(noise)
    acc = 0.0
    for i, e in enumerate(noise):
        acc = rho * acc + e
        x[i] = acc
    det = build_detector(KSWindowSpec())
    assert not any(r.breached for r in _feed(det, x, 1000))


def test_rolling_reference_follows_a_slow_trend_a_fixed_one_flags_it() -> None:
    rng = np.random.default_rng(9)
    trend = np.linspace(0, 3, 100_000) + rng.normal(size=100_000)
    fixed = build_detector(KSWindowSpec(reference={"size": 2000}))
    rolling = build_detector(KSWindowSpec(reference={"size": 2000, "mode": "rolling"}))
    assert any(r.breached for r in _feed(fixed, trend, 1000))
    assert not any(r.breached for r in _feed(rolling, trend, 1000))


def test_reference_file_gives_verdicts_from_the_first_window(tmp_path: Any) -> None:
    path = tmp_path / "ref.txt"
    np.savetxt(path, np.random.default_rng(1).normal(size=5000))
    det = build_detector(KSWindowSpec(reference={"path": str(path)}))
    readings = _feed(det, np.random.default_rng(2).normal(3.0, 1.0, 1000))
    verdicts = [r.verdict for r in readings]
    # min_samples (200) is reached on the 2nd batch; the breach then persists 200 events.
    assert verdicts[:5] == [
        Verdict.INCONCLUSIVE,
        Verdict.OK,
        Verdict.OK,
        Verdict.DRIFT,
        Verdict.DRIFT,
    ]


def test_missing_reference_file_is_a_precise_error(tmp_path: Any) -> None:
    missing = tmp_path / "nope.npy"
    with pytest.raises(ValueError, match=r"cannot read reference values from .*nope\.npy"):
        build_detector(KSWindowSpec(reference={"path": str(missing)}))


def test_checkpoint_cannot_smuggle_arbitrary_code() -> None:
    from detectors.serialization import pack

    det = build_detector(_spec("adwin"))
    good = det.to_bytes()
    from detectors.serialization import unpack

    raw = unpack(good)
    raw["state"]["extra"]["river"] = {"__river__": pickle.dumps(print)}
    with pytest.raises(StateError, match=r"refusing to restore builtins\.print"):
        restore_detector(pack(raw))
    with pytest.raises(StateError, match="not a detector state"):
        restore_detector(b"\x00garbage")


def test_every_detector_type_is_in_the_policy_union() -> None:
    for kind in ALL_TYPES:
        assert _SPEC_ADAPTER.validate_python({"type": kind}).type == kind
