"""The daemon-facing API: specs, build, restore, defaults."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from detectors import (
    InputKind,
    Verdict,
    build_detector,
    default_spec,
    parse_spec,
    restore_detector,
)


def test_rate_window_with_threshold_flags_anomaly_after_persisting() -> None:
    det = build_detector(
        parse_spec(
            {
                "type": "rate_window",
                "threshold": 0.1,
                "window": 100,
                "min_samples": 50,
                "stride": 10,
                "persist": 20,
            }
        )
    )
    assert det.update_many(np.zeros(100)).verdict is Verdict.OK
    verdicts = [det.update_many(np.ones(10)).verdict for _ in range(5)]
    # The rate first exceeds 0.1 on the 2nd batch and must hold 20 events: the 4th batch.
    assert verdicts == [Verdict.OK, Verdict.OK, Verdict.OK, Verdict.ANOMALY, Verdict.ANOMALY]


def test_adwin_restored_from_bytes_continues_with_identical_verdicts() -> None:
    rng = np.random.default_rng(0)
    det = build_detector(parse_spec({"type": "adwin", "reference": {"size": 1000}}))
    det.update_many(rng.normal(size=3000))
    clone = restore_detector(det.to_bytes())
    tail = np.r_[rng.normal(size=1000), rng.normal(1.5, 1, size=2000)]
    a = [det.update_many(tail[i : i + 50]) for i in range(0, tail.size, 50)]
    b = [clone.update_many(tail[i : i + 50]) for i in range(0, tail.size, 50)]
    assert a == b
    assert any(r.verdict is Verdict.DRIFT for r in a)


def test_window_smaller_than_min_samples_is_rejected_with_both_values() -> None:
    with pytest.raises(ValidationError, match=r"window must be larger than min_samples"):
        parse_spec({"type": "rate_window", "window": 100, "min_samples": 200})


@pytest.mark.parametrize("kind", list(InputKind))
def test_default_spec_reads_its_input_kind(kind: InputKind) -> None:
    assert default_spec(kind).input_kind is kind
