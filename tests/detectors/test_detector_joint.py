"""joint_drift: catches a change of how features co-vary that no marginal shows, stays quiet on
stationary streams of every awkward kind, restores exactly, and refuses hostile input clearly."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from detectors import StateError, Verdict, build_detector, parse_spec, restore_detector
from detectors.joint import JointDriftDetector, JointDriftSpec

D = 5


def _correlated(n: int, rng: np.random.Generator, rho: float) -> np.ndarray:
    x = rng.normal(size=(n, D))
    x[:, 1] = rho * x[:, 0] + math.sqrt(1.0 - rho * rho) * x[:, 1]
    return x


def _ar1(n: int, rng: np.random.Generator, rho: float) -> np.ndarray:
    noise = _correlated(n, rng, 0.9) * math.sqrt(1.0 - rho * rho)
    out = np.empty((n, D))
    acc = _correlated(1, rng, 0.9)[0]
    for i in range(n):
        acc = rho * acc + noise[i]
        out[i] = acc
    return out


def _first_breach(det: Any, rows: np.ndarray, batch: int = 100) -> int | None:
    for start in range(0, rows.shape[0], batch):
        if det.update_many(rows[start : start + batch]).breached:
            return start + batch
    return None


@pytest.mark.parametrize("score", ["pca_reconstruction", "mahalanobis"])
def test_joint_drift_catches_a_correlation_flip_no_marginal_shows(score: str) -> None:
    rng = np.random.default_rng(11)
    before = _correlated(15_000, rng, 0.9)
    after = _correlated(5_000, rng, -0.9)
    # Every marginal is the same N(0, 1) before and after.
    assert np.allclose(before.std(axis=0), after.std(axis=0), atol=0.05)
    det = build_detector(JointDriftSpec(score=score))
    assert _first_breach(det, before) is None
    at = _first_breach(det, after)
    assert at is not None and at <= 3000
    # Seeded stream, fixed cadence: the index where it fires is part of the behaviour.
    assert at == {"pca_reconstruction": 500, "mahalanobis": 500}[score]
    assert det.reading().verdict is Verdict.DRIFT


STATIONARY = {
    "lognormal": lambda n, rng: np.exp(_correlated(n, rng, 0.9)),
    "student_t3": lambda n, rng: (
        _correlated(n, rng, 0.9) / np.sqrt(rng.chisquare(3, size=(n, 1)) / 3.0)
    ),
    "zero_inflated": lambda n, rng: np.where(
        rng.random((n, D)) < 0.7, 0.0, rng.lognormal(size=(n, D))
    ),
    "poisson": lambda n, rng: rng.poisson(5.0, size=(n, D)).astype(np.float64),
    "ar1_0995": lambda n, rng: _ar1(n, rng, 0.995),
    "fifty_correlated": lambda n, rng: (
        rng.normal(size=(n, 3)) @ np.random.default_rng(99).normal(0.0, 0.6, size=(3, 50))
        + rng.normal(size=(n, 50))
    ),
}


@pytest.mark.parametrize("score", ["pca_reconstruction", "mahalanobis"])
@pytest.mark.parametrize("stream", sorted(STATIONARY))
def test_joint_drift_is_quiet_on_stationary_streams(stream: str, score: str) -> None:
    rng = np.random.default_rng(21)
    det = build_detector(JointDriftSpec(score=score))
    rows = STATIONARY[stream](80_000, rng)
    readings = [det.update_many(rows[i : i + 100]) for i in range(0, rows.shape[0], 100)]
    assert not any(r.breached for r in readings)
    # It did test (a quiet detector that never tests would pass the line above).
    assert sum(r.verdict is Verdict.OK for r in readings) > 600


def _same(a: Any, b: Any) -> bool:
    """Readings equal field by field, NaN equal to NaN."""
    return bool(np.array_equal(np.array(_fields(a)), np.array(_fields(b)), equal_nan=True))


def _fields(r: Any) -> list[float]:
    return [r.statistic, r.effect, r.samples, r.threshold, list(Verdict).index(r.verdict)]


def test_joint_drift_state_round_trips_mid_reference_and_mid_window() -> None:
    rng = np.random.default_rng(5)
    rows = np.concatenate([_correlated(6_000, rng, 0.9), _correlated(3_000, rng, -0.9)])
    spec = JointDriftSpec(reference={"size": 4000})
    for cut in (1_500, 4_550, 6_250):
        det = build_detector(spec)
        det.update_many(rows[:cut])
        twin = restore_detector(det.to_bytes())
        assert isinstance(twin, JointDriftDetector)
        assert _same(twin.reading(), det.reading())
        for start in range(cut, rows.shape[0], 100):
            a = det.update_many(rows[start : start + 100])
            b = twin.update_many(rows[start : start + 100])
            assert _same(a, b)
        assert det.reading().verdict is Verdict.DRIFT


def test_joint_drift_rejects_a_corrupt_checkpoint_with_state_error() -> None:
    det = build_detector(JointDriftSpec(reference={"size": 100}, window=100, min_samples=50))
    det.update_many(np.random.default_rng(0).normal(size=(300, 3)))
    raw = det.to_bytes()
    from detectors.serialization import pack, unpack

    broken = unpack(raw)
    del broken["state"]["calibration"]
    with pytest.raises(StateError, match="joint_drift state is invalid"):
        restore_detector(pack(broken))


def test_joint_drift_drops_rows_with_nan_and_counts_them() -> None:
    rng = np.random.default_rng(2)
    det = build_detector(JointDriftSpec(reference={"size": 1000}))
    rows = _correlated(3_000, rng, 0.9)
    rows[::10, 2] = np.nan
    reading = det.update_many(rows)
    assert det.dropped == 300  # type: ignore[attr-defined]
    assert reading.verdict is Verdict.OK and reading.samples == 1000


def test_joint_drift_survives_infinities_and_absurd_magnitudes() -> None:
    rng = np.random.default_rng(3)
    det = build_detector(JointDriftSpec(reference={"size": 2000}))
    rows = _correlated(6_000, rng, 0.9)
    rows[10, 0] = np.inf
    rows[3_000, 1] = -1e308
    reading = det.update_many(rows)
    assert math.isfinite(reading.statistic) and not reading.breached
    assert det.extremes.infinite >= 1  # type: ignore[attr-defined]


def test_joint_drift_with_a_constant_feature_stays_finite_and_sees_it_move() -> None:
    rng = np.random.default_rng(4)
    for score in ("pca_reconstruction", "mahalanobis"):
        det = build_detector(JointDriftSpec(score=score, reference={"size": 2000}))
        rows = _correlated(5_000, rng, 0.9)
        rows[:, 3] = 7.0
        quiet = det.update_many(rows)
        assert quiet.verdict is Verdict.OK and math.isfinite(quiet.statistic)
        moved = _correlated(2_000, rng, 0.9)
        moved[:, 3] = 7.0 + rng.normal(size=2_000)
        assert _first_breach(det, moved) is not None


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.zeros((10, 1)), "needs at least 2 features, got 1"),
        (np.zeros((2, 2, 2)), "needs a 2-D array"),
        (np.zeros((10, 101)), "max_features is 100"),
    ],
)
def test_joint_drift_refuses_input_it_cannot_model(rows: np.ndarray, message: str) -> None:
    det = build_detector(JointDriftSpec())
    with pytest.raises(ValueError, match=message):
        det.update_many(rows)


def test_joint_drift_refuses_a_feature_that_disappears() -> None:
    det = build_detector(JointDriftSpec(reference={"size": 100}))
    det.update_many(np.zeros((10, 4)))
    with pytest.raises(ValueError, match="rows of 3 features, its reference has 4"):
        det.update_many(np.zeros((10, 3)))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"reference": {"mode": "rolling"}}, "reference mode 'fixed'"),
        ({"reference": {"path": "/tmp/x.npy"}}, "reference mode 'fixed'"),
        ({"variance_kept": 1.0}, "less than 1"),
        ({"min_effect": 0.5}, "less than 0.5"),
        ({"score": "pca"}, "pca_reconstruction"),
    ],
)
def test_joint_drift_spec_errors_name_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_spec({"type": "joint_drift", **raw})


def test_a_policy_naming_one_feature_for_joint_drift_is_refused_at_check_time() -> None:
    from monitor.config.policy import SignalPolicy

    ok = SignalPolicy.model_validate(
        {"source": "anomaly", "features": ["a", "b"], "detector": {"type": "joint_drift"}}
    )
    assert ok.detector_spec.type == "joint_drift"
    with pytest.raises(ValidationError, match="'joint_drift' needs at least 2 features, got 1"):
        SignalPolicy.model_validate(
            {"source": "anomaly", "features": ["a"], "detector": {"type": "joint_drift"}}
        )


def test_joint_drift_empty_batches_change_nothing_and_fix_no_width() -> None:
    det = build_detector(JointDriftSpec(reference={"size": 100}))
    for empty in ([], np.zeros((0, 3)), np.zeros(0)):
        assert det.update_many(empty).verdict is Verdict.INCONCLUSIVE
    # The first rows, not an empty batch, say how many features the model has.
    det.update_many(np.zeros((10, 4)))
    assert det.update_many(np.zeros((0, 4))).samples == 0


def test_joint_drift_refuses_non_numeric_rows_naming_itself() -> None:
    det = build_detector(JointDriftSpec())
    with pytest.raises(ValueError, match="joint_drift needs numeric rows"):
        det.update_many([["a", "b"], ["c", "d"]])


def test_joint_drift_row_by_row_reads_like_batches() -> None:
    rng = np.random.default_rng(8)
    rows = np.concatenate([_correlated(3_000, rng, 0.9), _correlated(1_500, rng, -0.9)])
    spec = JointDriftSpec(reference={"size": 2000})
    batched = build_detector(spec)
    single = build_detector(spec)
    for start in range(0, rows.shape[0], 100):
        a = batched.update_many(rows[start : start + 100])
        for row in rows[start : start + 100]:
            b = single.update(row)
        assert _same(a, b)
    assert batched.reading().verdict is Verdict.DRIFT
