"""Policy validation of ``detector:`` blocks: every field, precise errors."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from detectors import parse_spec


def _error(raw: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ValidationError) as info:
        parse_spec(raw)
    err = info.value.errors()[0]
    return ".".join(str(p) for p in err["loc"]), err["msg"]


@pytest.mark.parametrize(
    ("raw", "where", "message"),
    [
        ({"type": "ks_window", "window": 5}, "ks_window.window", "greater than or equal to 10"),
        ({"type": "ks_window", "min_samples": 0}, "ks_window.min_samples", "greater than or equal to 1"),
        ({"type": "ks_window", "stride": 0}, "ks_window.stride", "greater than or equal to 1"),
        ({"type": "ks_window", "persist": -1}, "ks_window.persist", "greater than or equal to 0"),
        ({"type": "ks_window", "false_alarm_every": 10}, "ks_window.false_alarm_every", "greater than or equal to 1000"),
        ({"type": "ks_window", "min_shift": -0.1}, "ks_window.min_shift", "greater than or equal to 0"),
        ({"type": "ks_window", "min_scale_ratio": 0.5}, "ks_window.min_scale_ratio", "greater than or equal to 1"),
        ({"type": "ks_window", "calibration": "magic"}, "ks_window.calibration", "'analytic' or 'bootstrap'"),
        ({"type": "ks_window", "reference": {"size": 10}}, "ks_window.reference.size", "greater than or equal to 50"),
        ({"type": "ks_window", "reference": {"mode": "sliding"}}, "ks_window.reference.mode", "'fixed' or 'rolling'"),
        ({"type": "ks_window", "windw": 100}, "ks_window.windw", "Extra inputs are not permitted"),
        ({"type": "adwin", "delta": 0}, "adwin.delta", "greater than 0"),
        ({"type": "adwin", "delta": 1}, "adwin.delta", "less than 1"),
        ({"type": "adwin", "max_buckets": 1}, "adwin.max_buckets", "greater than or equal to 2"),
        ({"type": "page_hinkley", "threshold": 0}, "page_hinkley.threshold", "greater than 0"),
        ({"type": "page_hinkley", "mode": "sideways"}, "page_hinkley.mode", "'up', 'down' or 'both'"),
        ({"type": "psi", "threshold": 0}, "psi.threshold", "greater than 0"),
        ({"type": "psi", "max_categories": 1}, "psi.max_categories", "greater than or equal to 2"),
        ({"type": "psi", "epsilon": 0.5}, "psi.epsilon", "less than 0.1"),
        ({"type": "jensen_shannon", "threshold": 2}, "jensen_shannon.threshold", "less than or equal to 1"),
        ({"type": "unseen_rate", "threshold": 1}, "unseen_rate.threshold", "less than 1"),
        ({"type": "rate_window", "threshold": 1.5}, "rate_window.threshold", "less than or equal to 1"),
        ({"type": "rate_window", "min_difference": -1}, "rate_window.min_difference", "greater than or equal to 0"),
        ({"type": "rate_window", "alert_on": "up"}, "rate_window.alert_on", "'increase', 'decrease' or 'both'"),
        ({"type": "missing_rate", "threshold": -0.1}, "missing_rate.threshold", "greater than or equal to 0"),
        ({"type": "ddm", "drift_threshold": 0}, "ddm.drift_threshold", "greater than 0"),
        ({"type": "eddm", "alpha": 1}, "eddm.alpha", "less than 1"),
        ({"type": "hddm_a", "drift_confidence": 0}, "hddm_a.drift_confidence", "greater than 0"),
        ({"type": "hddm_w", "lambda_val": 1}, "hddm_w.lambda_val", "less than 1"),
        ({"type": "quantile", "q": 1}, "quantile.q", "less than 1"),
        ({"type": "quantile", "max_ratio": 1}, "quantile.max_ratio", "greater than 1"),
        ({"type": "half_space_trees", "height": 0}, "half_space_trees.height", "greater than or equal to 1"),
        ({"type": "half_space_trees", "score_quantile": 0.2}, "half_space_trees.score_quantile", "greater than 0.5"),
        ({"type": "half_space_trees", "n_trees": 1000}, "half_space_trees.n_trees", "less than or equal to 100"),
    ],
)  # fmt: skip
def test_out_of_range_field_names_the_field_and_the_bound(
    raw: dict[str, Any], where: str, message: str
) -> None:
    loc, msg = _error(raw)
    assert loc == where
    assert message in msg


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"type": "rate_window", "window": 100, "min_samples": 200},
         "window must be larger than min_samples (window=100, min_samples=200)"),
        ({"type": "ks_window", "window": 100, "min_samples": 50, "stride": 200},
         "stride must not exceed window (stride=200, window=100)"),
        ({"type": "ks_window", "reference": {"mode": "rolling", "path": "ref.npy"}},
         "reference.path needs mode 'fixed', not 'rolling'"),
        ({"type": "eddm", "alpha": 0.9, "beta": 0.95},
         "beta must be smaller than alpha (beta=0.95, alpha=0.9)"),
        ({"type": "ddm", "warning_threshold": 4, "drift_threshold": 3},
         "warning_threshold must not exceed drift_threshold"),
    ],
)  # fmt: skip
def test_inconsistent_fields_are_rejected_with_the_values(
    raw: dict[str, Any], message: str
) -> None:
    _, msg = _error(raw)
    assert message in msg


def test_unknown_detector_type_lists_the_known_ones() -> None:
    _, msg = _error({"type": "magic"})
    assert "adwin" in msg and "half_space_trees" in msg


def test_defaults_are_valid_and_frozen() -> None:
    spec = parse_spec({"type": "ks_window"})
    assert (spec.window, spec.min_samples, spec.stride) == (1000, 200, 100)
    with pytest.raises(ValidationError):
        spec.window = 5
