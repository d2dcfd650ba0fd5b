"""Smoke run of the policy bench (auto coverage and the example policy through the engine), so
the harness never rots: its quick run's verdicts, the helper that stands in for the engine's
discovery, and the delayed-outcome generator the bench will run once outcomes are joined.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import detection_quality, policy_quality
from monitor.config.policy import ModelPolicy


@pytest.mark.timeout(300)
def test_quick_run_writes_the_report_and_the_auto_policy_meets_its_targets_at_20_per_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "policy_quality.md"

    assert detection_quality.main(["--policy", "--quick", "--rates", "20", "--out", str(out)]) == 0

    text = out.read_text()
    assert text.startswith("# Detection quality of whole policies")
    assert "`python bench/detection_quality.py --policy --quick --rates 20 --out" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")]
    auto_fa = [r for r in rows if r[1] == "auto (no signal named)" and r[2] == "30000"]
    assert len(auto_fa) == len(policy_quality.stationary_streams(30_000))
    for row in auto_fa:
        # rate cell, worst level: stationary streams stay quiet; the slow trend only warns.
        assert row[4] == ("warn" if row[0] == "| slow trend" else "ok"), row
        if row[0] != "| slow trend" and row[6] != "-":
            # No breach held for the `for` (30 s = 600 events at 20/s): else it escalates.
            assert int(row[6].split()[0]) < 600, row
    cases = {r[0].removeprefix("| "): r for r in rows if r[2] == "auto (no signal named)"}
    for case in policy_quality.change_cases():
        row = cases[case.name]
        assert row[4] == "2/2 PASS", row  # within 2,000 events at 20/s, `for` included
    example = [r for r in rows if r[2] == "example policy before auto coverage"]
    feature_shift = next(r for r in example if r[0].endswith("1 of 5 features"))
    assert feature_shift[4] == "0/2 FAIL"  # the example policy watches no feature
    assert text.rstrip().endswith("delay targets at 20/s PASS.")
    assert "false alarms PASS" in text
    assert capsys.readouterr().out.startswith("# Detection quality of whole policies")


def test_the_engine_discovers_the_auto_policy_from_the_first_events() -> None:
    scale, centre = policy_quality.score_scale(policy_quality.normal_stream)
    events = next(
        policy_quality.event_chunks(
            policy_quality.normal_stream(), np.random.default_rng(0), 300, scale, centre
        )
    )
    engine = policy_quality.monitored(ModelPolicy())
    engine.apply(events[:100], 5.0)
    monitor = engine.models[policy_quality.MODEL]
    assert monitor.signals == []  # still discovering: nothing named, nothing built

    engine.apply(events[100:], 15.0)

    assert monitor.events == 300
    assert [s.name for s in monitor.signals] == [
        "features",
        "missing",
        "schema",
        "prediction",
        "confidence",
        "latency_ms",
        "error",
        "engagement",
    ]
    features = monitor.signals[0]
    assert [m.name for m in features.members] == [f"features.f{j}" for j in range(5)]
    # The bench's calibration: the model's `for` holds each breach, the detectors none.
    assert {s.policy.detector_spec.persist for s in monitor.signals} == {0}
    engine = policy_quality.monitored(policy_quality.example_policy())
    engine.apply(events, 10.0)
    assert [s.name for s in engine.models[policy_quality.MODEL].signals] == [
        "error_rate",
        "latency_p99",
        "confidence_drift",
    ]


def test_each_outcome_arrives_after_its_prediction_with_the_accuracy_of_its_side() -> None:
    n, change = 20_000, 10_000
    arrivals = policy_quality.outcome_stream(np.random.default_rng(4), n, change, 1.0, 0.0)

    predicted: dict[str, tuple[int, object]] = {}
    right = {"before": [0, 0], "after": [0, 0]}
    for at, event in arrivals:
        assert event.request_id is not None
        if event.label is None:
            assert event.prediction in ("0", "1")
            assert event.request_id not in predicted  # one prediction per request id
            predicted[event.request_id] = (at, event.prediction)
            continue
        assert event.prediction is None and event.features is None
        made, prediction = predicted[event.request_id]  # the prediction came first
        low, high = policy_quality.OUTCOME_DELAY
        assert low <= at - made < high
        side = right["before" if made < change else "after"]
        side[0] += event.label == prediction
        side[1] += 1
    assert len(predicted) == n
    assert sum(s[1] for s in right.values()) > 0.85 * n  # the late tail is cut at the end
    before = right["before"][0] / right["before"][1]
    after = right["after"][0] / right["after"][1]
    assert before == pytest.approx(policy_quality.ACCURACY_BEFORE, abs=0.01)
    assert after == pytest.approx(policy_quality.ACCURACY_AFTER, abs=0.015)


@pytest.mark.parametrize(
    "argv",
    [
        ["--rates", "fast"],
        ["--rates", "0"],
        ["--rates", "20,nan"],
        ["--events", "100"],
        ["--seeds", "0"],
    ],
)
def test_bad_arguments_are_refused_naming_the_option(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        policy_quality.main(argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_a_candidate_policy_watches_the_discovered_signals_and_its_multivariate_one() -> None:
    scale, centre = policy_quality.score_scale(policy_quality.normal_stream)
    events = next(
        policy_quality.event_chunks(
            policy_quality.normal_stream(), np.random.default_rng(0), 300, scale, centre
        )
    )
    for detector in policy_quality.CANDIDATES:
        engine = policy_quality.monitored(policy_quality.with_candidate(detector, 5)())
        engine.apply(events, 10.0)
        signals = engine.models[policy_quality.MODEL].signals
        assert signals[0].name == "features"  # discovered first, named after
        assert signals[-1].name == detector
        assert signals[-1].members[0].detector.spec.type == detector


@pytest.mark.timeout(300)
def test_the_delayed_outcome_section_catches_the_accuracy_fall_with_no_signal_named() -> None:
    rows = policy_quality.outcome_rows(1, (20.0, 50.0))

    assert rows[0].startswith("## Delayed outcomes: accuracy 95% -> 75%")
    table = [r for r in rows if r.startswith("| ") and not r.startswith(("| policy", "| ---"))]
    assert [r.split(" | ")[0] for r in table] == [f"| {p}" for p in policy_quality.POLICIES]
    assert all(len(r.split(" | ")) == 7 for r in table)
    auto, before = (r.split(" | ") for r in table)
    # The auto policy joins the outcomes and gains label_error: caught at 20/s within 2,000;
    # the example policy before auto coverage watches no label at all.
    assert auto[3] == "1/1 PASS", auto
    assert before[1] == "- / -" and before[3] == "0/1 FAIL", before
