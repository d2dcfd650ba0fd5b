"""The outcome join: delayed outcome events meet their prediction by ``request_id`` within the
horizon, bounded per model and engine-wide, counted (joined + late + unmatched + duplicate ==
outcomes), fed to the label-based signals, kept in the checkpoint; regression error and
estimated accuracy; a discovering model gains its ground-truth signals when outcomes come.
"""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from monitor.config.policy import Level, ModelPolicy, OutcomePolicy, SignalSource
from monitor.config.settings import Settings
from monitor.engine.columns import EventColumns, extractors_for
from monitor.engine.discovery import ObservedSchema, coverage
from monitor.engine.engine import Engine, ModelMonitor, describe
from monitor.engine.events import MAX_STRING_CHARS, Event
from monitor.engine.outcomes import (
    Eviction,
    OutcomeBudget,
    OutcomeJoin,
    OutcomeResult,
    request_key,
)
from monitor.observability.metrics import Metrics
from monitor.observability.publisher import SeriesPublisher
from monitor.state.checkpoints import restore_model, snapshot_model
from tests.conftest import fast_rate_window

JOINED, LATE, UNMATCHED, DUPLICATE = (
    OutcomeResult.JOINED,
    OutcomeResult.LATE,
    OutcomeResult.UNMATCHED,
    OutcomeResult.DUPLICATE,
)


def prediction(rid: str, y: Any, model: str = "m", **more: Any) -> Event:
    return Event(model=model, request_id=rid, prediction=y, **more)


def outcome(rid: str, y: Any, model: str = "m") -> Event:
    return Event(model=model, request_id=rid, label=y)


def results(join: OutcomeJoin) -> dict[str, int]:
    return {r.value: n for r, n in join.counts.outcomes.items()}


def test_an_outcome_meets_its_prediction_once_and_its_index_gets_the_prediction() -> None:
    join = OutcomeJoin(OutcomePolicy())
    assert join.observe([prediction("a", "cat"), prediction("b", "dog")], 0, 2, now=0.0) == {}
    batch = [outcome("b", "dog"), prediction("c", "cat"), outcome("a", "cat"), outcome("a", "x")]
    assert join.observe(batch, 0, 4, now=1.0) == {0: "dog", 2: "cat"}
    assert results(join) == {"joined": 2, "late": 0, "unmatched": 0, "duplicate": 1}
    assert list(join.pending) == [request_key("c")]


def test_an_outcome_without_request_id_is_unmatched() -> None:
    join = OutcomeJoin(OutcomePolicy())
    join.observe([Event(model="m", label="x"), Event(model="m", prediction="x")], 0, 2, now=0.0)
    assert results(join) == {"joined": 0, "late": 0, "unmatched": 1, "duplicate": 0}
    assert not join.pending


def test_outcome_before_its_prediction_is_unmatched_and_the_prediction_still_waits() -> None:
    join = OutcomeJoin(OutcomePolicy())
    join.observe([outcome("a", 1.0), prediction("a", 1.0)], 0, 2, now=0.0)
    assert results(join)["unmatched"] == 1
    assert len(join.pending) == 1


def test_a_prediction_past_the_horizon_is_evicted_by_age_and_its_outcome_is_late() -> None:
    join = OutcomeJoin(OutcomePolicy(horizon="10s"))
    join.observe([prediction("old", 1.0)], 0, 1, now=0.0)
    join.observe([prediction("new", 1.0)], 0, 1, now=5.0)
    join.observe([outcome("old", 1.0), outcome("new", 1.0)], 0, 2, now=10.5)
    assert join.counts.evicted == {Eviction.AGE: 1, Eviction.COUNT: 0, Eviction.REPLACED: 0}
    assert results(join) == {"joined": 1, "late": 1, "unmatched": 0, "duplicate": 0}


def test_the_event_ts_never_times_the_join() -> None:
    join = OutcomeJoin(OutcomePolicy(horizon="10s"))
    # An event time a year back (or ahead) is the sender's claim; the batch clock decides.
    join.observe([prediction("a", 1.0, ts=1.0)], 0, 1, now=1e9)
    join.observe([Event(model="m", request_id="a", label=1.0, ts=1e10)], 0, 1, now=1e9 + 5)
    assert results(join)["joined"] == 1


def test_an_event_with_its_own_label_is_not_kept_and_a_later_outcome_is_a_duplicate() -> None:
    join = OutcomeJoin(OutcomePolicy())
    join.observe([Event(model="m", request_id="a", prediction="x", label="x")], 0, 1, now=0.0)
    assert not join.pending
    join.observe([outcome("a", "x")], 0, 1, now=1.0)
    assert results(join)["duplicate"] == 1


def test_a_flood_of_unique_long_ids_keeps_memory_at_the_bound() -> None:
    join = OutcomeJoin(OutcomePolicy(max_pending=1_000))
    rid = "x" * (MAX_STRING_CHARS - 10)
    for batch in range(20):
        events = [prediction(f"{rid}{batch:04d}{i:05d}", "y" * 1024) for i in range(500)]
        events += [outcome(f"nobody{batch}-{i}", "y") for i in range(500)]
        join.observe(events, 0, len(events), now=float(batch))
    assert len(join.pending) == 1_000
    assert len(join.gone) <= 1_000
    assert join.counts.evicted[Eviction.COUNT] == 9_000
    assert results(join)["unmatched"] == 10_000
    # Neither the 1,014-character ids nor the 1,024-character predictions are kept as such.
    kept_prediction = next(iter(join.pending.values()))[0]
    assert isinstance(kept_prediction, bytes) and len(kept_prediction) == 16


def test_a_long_category_kept_as_a_digest_still_matches_its_label() -> None:
    join = OutcomeJoin(OutcomePolicy())
    long_class = "class-" + "z" * 900
    join.observe([prediction("a", long_class), prediction("b", long_class)], 0, 2, now=0.0)
    events = [outcome("a", long_class), outcome("b", "other")]
    cols = EventColumns(events)
    cols.joined = join.observe(events, 0, 2, now=1.0)
    policy = ModelPolicy.model_validate({"signals": [{"source": "label_error"}]})
    ((_, column),) = extractors_for(policy.signals[0])
    assert cols.get(column).tolist() == [0.0, 1.0]


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["predict", "outcome", "labelled", "tick"]),
            st.integers(min_value=0, max_value=30),
        ),
        max_size=300,
    ),
    max_pending=st.integers(min_value=1, max_value=20),
    split=st.integers(min_value=1, max_value=7),
)
def test_every_outcome_is_counted_once_and_joined_at_most_once(
    steps: list[tuple[str, int]], max_pending: int, split: int
) -> None:
    join = OutcomeJoin(OutcomePolicy(horizon="5s", max_pending=max_pending))
    now = 0.0
    events: list[Event] = []
    outcomes = 0
    joined_ids: list[str] = []

    def flush() -> None:
        found = join.observe(events, 0, len(events), now)
        joined_ids.extend(str(events[i].request_id) for i in found)
        assert all(events[i].label is not None and events[i].prediction is None for i in found)
        events.clear()

    for k, (kind, rid) in enumerate(steps):
        if kind == "predict":
            events.append(prediction(str(rid), 1.0))
        elif kind == "outcome":
            events.append(outcome(str(rid), 1.0))
            outcomes += 1
        elif kind == "labelled":
            events.append(Event(model="m", request_id=str(rid), prediction=1.0, label=1.0))
        else:
            now += rid / 3
        if k % split == 0:
            flush()
    flush()
    counts = join.counts
    assert sum(counts.outcomes.values()) == outcomes
    assert counts.outcomes[JOINED] == len(joined_ids)
    assert len(join.pending) <= max_pending and len(join.gone) <= max_pending
    # Joined at most once per prediction kept: a request id joins again only if predicted again.
    predicted = sum(1 for kind, _ in steps if kind == "predict")
    assert counts.outcomes[JOINED] <= predicted
    assert counts.kept == predicted
    # Every prediction kept is joined, evicted (age, count, replaced) or still pending.
    left = counts.outcomes[JOINED] + sum(counts.evicted.values()) + len(join.pending)
    assert counts.kept == left


def test_the_engine_wide_budget_bounds_a_thousand_models_together() -> None:
    budget = OutcomeBudget(10_000)
    joins = [OutcomeJoin(OutcomePolicy(max_pending=1_000), budget) for _ in range(1_000)]
    for k, join in enumerate(joins):
        budget.enlist(join, now=0.0)
        events = [prediction(f"{k}-{i}", 1.0) for i in range(200)]
        join.observe(events, 0, len(events), now=0.0)
        assert budget.pending() <= 10_000
    assert budget.share == 10
    assert all(len(join.pending) == 10 for join in joins)


def test_memory_per_pending_prediction(capsys: pytest.CaptureFixture[str]) -> None:
    join = OutcomeJoin(OutcomePolicy(max_pending=100_000))
    events = [prediction(f"request-{i:012d}", "approve" if i % 2 else 0.73) for i in range(50_000)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    join.observe(events, 0, len(events), now=0.0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    per_entry = grown / len(join.pending)
    with capsys.disabled():
        print(f"\noutcome join: {per_entry:.0f} bytes per pending prediction")
    assert per_entry < 300  # documented as about 200 bytes in docs/outcomes.md


ROLLING = {"type": "rate_window", "window": 500, "min_samples": 200, "stride": 50}


def _stream(
    n: int, start: int, accuracy: float, rng: np.random.Generator
) -> tuple[list[Event], dict[str, str]]:
    """Predictions of a classifier whose inputs never change; the truth of each request."""
    events, truth = [], {}
    for i in range(start, start + n):
        y = "fraud" if rng.random() < 0.3 else "ok"
        right = rng.random() < accuracy
        guess = y if right else ("ok" if y == "fraud" else "fraud")
        events.append(
            Event(
                model="m",
                request_id=f"req-{i}",
                prediction=guess,
                confidence=0.95,
                features={"amount": float(rng.lognormal(3, 1))},
            )
        )
        truth[f"req-{i}"] = y
    return events, truth


def test_accuracy_falling_only_in_delayed_outcomes_reaches_the_label_level_in_2000(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """95% -> 75% accuracy with unchanged inputs, seen only in outcomes arriving 100 requests
    (and one batch) later: the label signal's level within 2,000 outcome events."""
    policy = ModelPolicy.model_validate(
        {
            "health": {"for": "30s"},
            "signals": [
                {"source": "label_error", "level": "degraded"},
                {"source": "feature", "feature": "amount"},
            ],
        }
    )
    engine = Engine(lambda model: policy, max_models=10)
    rng = np.random.default_rng(15)
    truth: dict[str, str] = {}
    waiting: list[str] = []
    outcomes_since_change = 0
    changed_at = 200  # batches of 50 predictions, one per second
    reached: int | None = None
    for batch in range(400):
        preds, more = _stream(50, batch * 50, 0.95 if batch < changed_at else 0.75, rng)
        truth.update(more)
        late = [Event(model="m", request_id=r, label=truth.pop(r)) for r in waiting]
        waiting = [e.request_id for e in preds if e.request_id is not None]
        if batch > changed_at:
            outcomes_since_change += len(late)
        for t in engine.apply(preds + late, float(batch)):
            assert t.to_level is Level.DEGRADED, t
            assert [c.signal for c in t.causes] == ["label_error"]
            reached = outcomes_since_change
        if reached is not None:
            break
    assert reached is not None and reached <= 2_000, reached
    with capsys.disabled():
        print(f"\naccuracy 95% -> 75%: degraded after {reached} outcome events (for: 30s)")
    status = describe(engine.models["m"])["outcomes"]
    assert status["outcomes"]["joined"] > 10_000
    assert status["outcomes"]["unmatched"] == status["outcomes"]["late"] == 0
    assert status["accuracy"]["estimated"]["recent"] == pytest.approx(0.95)
    assert status["accuracy"]["realized"]["recent"] < 0.85


def test_a_joined_prediction_counts_once_in_prediction_drift() -> None:
    policy = ModelPolicy.model_validate(
        {
            "signals": [
                {"source": "label_error"},
                {"source": "prediction", "detector": {"type": "psi"}},
            ]
        }
    )
    join = OutcomeJoin(policy.outcomes)
    (_, label_error), (_, predicted) = (extractors_for(s)[0] for s in policy.signals)
    first = [prediction(f"r{i}", "cat") for i in range(300)]
    cols = EventColumns(first)
    cols.joined = join.observe(first, 0, 300, now=0.0)
    assert cols.get(predicted) == ["cat"] * 300
    later = [outcome(f"r{i}", "cat" if i % 2 else "dog") for i in range(300)]
    cols = EventColumns(later)
    cols.joined = join.observe(later, 0, 300, now=1.0)
    # The outcomes' errors are theirs; their predictions were counted when they came.
    assert cols.get(predicted) == [None] * 300
    assert cols.get(label_error).tolist() == [1.0, 0.0] * 150


def test_regression_error_absolute_and_relative_of_joined_outcomes() -> None:
    policy = ModelPolicy.model_validate(
        {
            "signals": [
                {"source": "regression_error"},
                {"name": "relative", "source": "regression_error", "error": "relative"},
            ]
        }
    )
    events = [
        prediction("a", 12.5),
        Event(model="m", prediction=4.0, label=5.0),
        outcome("a", 10.0),
    ]
    cols = EventColumns(events)
    cols.joined = OutcomeJoin(policy.outcomes).observe(events, 0, 3, now=0.0)
    absolute = extractors_for(policy.signals[0])[0][1]
    relative = extractors_for(policy.signals[1])[0][1]
    assert cols.get(absolute).tolist()[1:] == [1.0, 2.5]
    assert cols.get(relative).tolist()[1:] == [0.2, 0.25]
    assert math.isnan(cols.get(absolute)[0])  # a prediction alone has no error yet


def test_error_option_applies_to_regression_error_only() -> None:
    with pytest.raises(ValueError, match="'error' only applies to source 'regression_error'"):
        ModelPolicy.model_validate({"signals": [{"source": "label_error", "error": "relative"}]})


def test_estimated_accuracy_from_confidence_or_a_probability_of_the_positive_class() -> None:
    policy = ModelPolicy.model_validate({"signals": [{"source": "estimated_accuracy"}]})
    ((_, column),) = extractors_for(policy.signals[0])
    events = [
        Event(model="m", prediction="cat", confidence=0.8),
        Event(model="m", prediction=0.1),
        Event(model="m", prediction="dog"),
        Event(model="m", label="dog"),
    ]
    values = EventColumns(events).get(column).tolist()
    assert values[:2] == [0.8, 0.9]
    assert all(math.isnan(v) for v in values[2:])


def test_checkpoint_keeps_the_pending_join_predictions_before_outcomes_after() -> None:
    policy = ModelPolicy.model_validate(
        {
            "signals": [
                {
                    "source": "label_error",
                    "detector": fast_rate_window(),
                    "thresholds": {"warn": 0.2},
                }
            ]
        }
    )
    before = ModelMonitor.build("m", policy, 0.0)
    before.apply([prediction(f"r{i}", "a" if i % 4 else "b") for i in range(500)], 1.0)
    before.apply([outcome(f"r{i}", "a") for i in range(100)], 2.0)
    restored = restore_model(snapshot_model(before, None, None), policy, 3.0, None)
    assert restored.outcomes is not None and len(restored.outcomes.pending) == 400
    restored.apply([outcome(f"r{i}", "a") for i in range(100, 500)], 4.0)
    counts = restored.outcomes.counts.outcomes
    assert counts[JOINED] == 500 and counts[UNMATCHED] == 0
    # A quarter of the predictions were "b", wrong, before and after the restart.
    assert restored.outcomes.realized.n == 500
    assert restored.outcomes.realized.total == 375
    assert restored.signals[0].members[0].detector.reading().statistic == 0.25


def test_a_full_join_checkpoint_fits_state_max_bytes_at_the_default_max_pending(
    capsys: pytest.CaptureFixture[str],
) -> None:
    policy = ModelPolicy.model_validate({"signals": [{"source": "label_error"}]})
    monitor = ModelMonitor.build("m", policy, 0.0)
    n = policy.outcomes.max_pending
    # The worst a sender can do: 1,024-character ids and predictions, twice the bound.
    rid = "r" * 1000
    monitor.apply([prediction(f"{rid}{i:06d}", "p" * 1024) for i in range(2 * n)], 1.0)
    assert monitor.outcomes is not None and len(monitor.outcomes.pending) == n
    size = len(snapshot_model(monitor, None, None))
    with capsys.disabled():
        print(f"\nfull outcome join checkpoint (max_pending={n}): {size} bytes")
    assert size < Settings().state.max_bytes / 4


def test_outcomes_counted_on_metrics_by_what_this_process_saw() -> None:
    policy = ModelPolicy.model_validate({"signals": [{"source": "label_error"}]})
    engine = Engine(lambda model: policy, max_models=10)
    metrics = Metrics.create(CollectorRegistry())
    publisher = SeriesPublisher(metrics, engine.models)
    engine.apply([prediction("a", 1.0), prediction("b", 1.0)], 0.0)
    publisher.publish(["m"])
    engine.apply([outcome("a", 1.0), outcome("a", 1.0), outcome("z", 1.0)], 1.0)
    publisher.publish(["m"])

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"model": "m", **labels})

    assert value("driftwarden_outcomes_total", result="joined") == 1
    assert value("driftwarden_outcomes_total", result="duplicate") == 1
    assert value("driftwarden_outcomes_total", result="unmatched") == 1
    assert value("driftwarden_outcomes_total", result="late") == 0
    assert value("driftwarden_outcome_predictions_evicted_total", reason="age") == 0
    assert value("driftwarden_outcome_predictions_pending") == 1
    publisher.unpublish("m", counters=True)
    assert value("driftwarden_outcomes_total", result="joined") is None


def test_outcomes_of_an_unknown_model_are_unmatched_and_join_auto_starts_then() -> None:
    engine = Engine(lambda model: ModelPolicy(), max_models=10)
    engine.apply([prediction("a", 1.0, model="new")], 0.0)
    assert engine.models["new"].outcomes is None  # nothing named, no outcome yet: none kept
    engine.apply([outcome("a", 1.0, model="new"), prediction("b", 1.0, model="new")], 1.0)
    engine.apply([outcome("b", 1.0, model="new")], 2.0)
    join = engine.models["new"].outcomes
    assert join is not None and results(join)["unmatched"] == 1 and results(join)["joined"] == 1


def test_join_off_keeps_nothing() -> None:
    policy = ModelPolicy.model_validate(
        {"outcomes": {"join": "off"}, "signals": [{"source": "label_error"}]}
    )
    engine = Engine(lambda model: policy, max_models=10)
    engine.apply([prediction("a", 1.0), outcome("a", 1.0)], 0.0)
    assert engine.models["m"].outcomes is None


def test_a_discovering_model_gains_its_ground_truth_signals_when_outcomes_come_late() -> None:
    policy = ModelPolicy.model_validate({"signals": "auto"})
    engine = Engine(lambda model: policy, max_models=10)
    batch = [prediction(f"r{i}", "cat" if i % 3 else "dog", confidence=0.9) for i in range(300)]
    engine.apply(batch, 0.0)
    monitor = engine.models["m"]
    assert "label_error" not in {s.name for s in monitor.signals}
    engine.apply([prediction(f"s{i}", "cat", confidence=0.9) for i in range(100)], 1.0)
    engine.apply([outcome("r0", "dog")], 2.0)  # the first outcome: predictions kept from now on
    engine.apply([outcome(f"s{i}", "cat") for i in range(100)], 3.0)
    assert monitor.outcomes is not None and monitor.outcomes.counts.outcomes[JOINED] == 0
    engine.apply([prediction(f"t{i}", "cat", confidence=0.9) for i in range(50)], 4.0)
    engine.apply([outcome(f"t{i}", "cat") for i in range(50)], 5.0)
    names = {s.name for s in monitor.signals}
    assert {"label_error", "estimated_accuracy"} <= names
    assert [c.origin for c in monitor.added] == ["discovered", "discovered"]
    # The gained signals survive a restart, with their detectors' state.
    restored = restore_model(snapshot_model(monitor, None, None), policy, 6.0, None)
    assert {s.name for s in restored.signals} == names
    (fed,) = (s.members[0].detector for s in monitor.signals if s.name == "label_error")
    (kept,) = (s.members[0].detector for s in restored.signals if s.name == "label_error")
    fresh = ModelMonitor.build("m", policy, 0.0)
    fresh.add_signals(monitor.added, 0.0)
    (empty,) = (s.members[0].detector for s in fresh.signals if s.name == "label_error")
    assert kept.to_bytes() == fed.to_bytes() != empty.to_bytes()
    assert describe(restored)["added_signals"][0]["name"] == "label_error"


def test_discovery_with_outcomes_watches_label_error_or_regression_error() -> None:
    policy = ModelPolicy.model_validate({"signals": "auto"})

    def covered(events: list[Event]) -> dict[str, SignalSource]:
        schema = ObservedSchema()
        schema.observe(events)
        return {c.name: c.policy.source for c in coverage(policy, schema)}

    classifier = [prediction(f"r{i}", "cat", confidence=0.8) for i in range(50)]
    classifier += [outcome(f"r{i}", "dog") for i in range(50)]
    found = covered(classifier)
    assert found["label_error"] is SignalSource.LABEL_ERROR
    assert found["estimated_accuracy"] is SignalSource.ESTIMATED_ACCURACY
    regression = [prediction(f"r{i}", 10.0 + i) for i in range(50)]
    regression += [outcome(f"r{i}", 9.0 + i) for i in range(50)]
    found = covered(regression)
    assert found["regression_error"] is SignalSource.REGRESSION_ERROR
    assert "label_error" not in found and "estimated_accuracy" not in found
    assert "label_error" not in covered(classifier[:50])  # no labels: nothing of ground truth


def test_a_bias_seen_only_in_outcomes_drifts_the_default_regression_error() -> None:
    policy = ModelPolicy.model_validate({"signals": [{"source": "regression_error"}]})
    engine = Engine(lambda model: policy, max_models=10)
    rng = np.random.default_rng(3)
    drifted_at = None
    for batch in range(60):
        bias = 0.0 if batch < 40 else 1.0
        truth = rng.normal(100.0, 10.0, 500)
        guesses = truth + rng.normal(bias, 1.0, 500)
        preds = [prediction(f"{batch}-{i}", float(g)) for i, g in enumerate(guesses)]
        outs = [outcome(f"{batch}-{i}", float(y)) for i, y in enumerate(truth)]
        engine.apply(preds, float(2 * batch))
        transitions = engine.apply(outs, float(2 * batch + 1))
        if transitions and drifted_at is None:
            drifted_at = batch
            assert transitions[0].causes[0].signal == "regression_error"
    assert drifted_at is not None and drifted_at >= 40  # none before: no false alarm
    assert engine.models["m"].outcomes is not None
    assert engine.models["m"].outcomes.realized.n == 0  # a regression: no accuracy


def test_a_malformed_join_in_a_checkpoint_is_left_out_and_the_rest_restored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = ModelPolicy.model_validate({"signals": [{"source": "label_error"}]})
    monitor = ModelMonitor.build("m", policy, 0.0)
    monitor.apply([prediction("a", 1.0)], 1.0)
    import msgspec

    raw = msgspec.msgpack.decode(snapshot_model(monitor, None, None))
    for broken in ({"keys": "not bytes"}, {"seen": b"\x00" * 3}, {"predictions": [[1]]}, {}):
        bad = dict(raw, outcomes={"join": {**raw["outcomes"]["join"], **broken}, "added": [{}]})
        if not broken:
            bad["outcomes"]["join"] = {"keys": b""}
        restored = restore_model(msgspec.msgpack.encode(bad), policy, 2.0, None)
        assert restored.events == 1
        assert restored.outcomes is not None and not restored.outcomes.pending
    assert "outcome join not restored" in caplog.text
    assert "a gained signal not restored" in caplog.text


@pytest.mark.parametrize(
    ("outcomes", "where"),
    [
        ({"max_pending": 0}, "max_pending"),
        ({"horizon": "-1s"}, "horizon"),
        ({"join": "sometimes"}, "join"),
        ({"horizon": "1h", "unknown": 1}, "unknown"),
    ],
)
def test_a_bad_outcomes_section_names_the_field(outcomes: dict[str, Any], where: str) -> None:
    with pytest.raises(ValueError, match=rf"outcomes\.{where}"):
        ModelPolicy.model_validate({"outcomes": outcomes})


def test_add_signals_leaves_out_a_name_already_watched_or_given_twice() -> None:
    policy = ModelPolicy.model_validate({"signals": [{"source": "label_error"}]})
    monitor = ModelMonitor.build("m", policy, 0.0)
    schema = ObservedSchema()
    schema.observe([prediction("a", 1.5), outcome("a", 2.5)])
    regression = coverage(ModelPolicy(), schema)[-1]
    label = coverage(policy, schema)[0]
    assert regression.name == "regression_error" and label.name == "label_error"
    assert monitor.add_signals([label, regression, regression], 1.0) == [regression]
    assert [s.name for s in monitor.signals] == ["label_error", "regression_error"]


def test_a_breach_held_for_for_survives_batches_with_no_outcome() -> None:
    """Predictions and outcomes in batches of their own: a label-free batch leaves the label
    signal's Reading as it was, so the breach keeps being held (and a no_data rule, which
    reads inconclusive Readings, keeps them)."""
    signal = {
        "source": "label_error",
        "detector": fast_rate_window(),
        "thresholds": {"degraded": 0.2},
        "for": "10s",
    }
    policy = ModelPolicy.model_validate({"signals": [signal]})
    engine = Engine(lambda model: policy, max_models=10)
    reached = None
    for second in range(0, 40, 2):
        engine.apply([prediction(f"{second}-{i}", "ok") for i in range(50)], float(second))
        outcomes = [outcome(f"{second}-{i}", "ok" if i % 2 else "fraud") for i in range(50)]
        if engine.apply(outcomes, float(second + 1)) and reached is None:
            reached = second + 1
    assert reached is not None and reached <= 13  # breached at 1 s, held 10 s
    with_no_data = ModelPolicy.model_validate(
        {"signals": [{**signal, "no_data": "warn", "no_data_after": "1h"}]}
    )
    sparse = [s.sparse for s in ModelMonitor.build("m", with_no_data, 0.0).signals]
    assert sparse == [False]
    assert [s.sparse for s in ModelMonitor.build("m", policy, 0.0).signals] == [True]


def test_outcomes_within_the_discovery_window_are_discovered_and_joined() -> None:
    policy = ModelPolicy.model_validate({"signals": "auto", "auto": {"discover_events": 100}})
    engine = Engine(lambda model: policy, max_models=10)
    engine.apply([prediction(f"r{i}", "cat", confidence=0.9) for i in range(40)], 0.0)
    engine.apply([outcome("r0", "cat")], 1.0)  # the first outcome: kept from now on
    engine.apply([prediction(f"s{i}", "cat", confidence=0.9) for i in range(40)], 2.0)
    engine.apply([outcome(f"s{i}", "dog") for i in range(40)], 3.0)  # discovery ends here
    monitor = engine.models["m"]
    assert not monitor.discovering
    origins = {c.name: c.origin for c in monitor.coverage()}
    assert origins["label_error"] == origins["estimated_accuracy"] == "discovered"
    assert monitor.added == []  # discovery saw the outcomes itself
    assert monitor.outcomes is not None and monitor.outcomes.counts.outcomes[JOINED] == 40
