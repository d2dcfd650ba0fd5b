"""The rules of auto coverage (``monitor.engine.discovery``): what an observed schema makes a
policy watch, how named signals override and add to it, what ``auto.ignore`` and
``auto.max_features`` leave out and say so, and that hostile feature names and sizes stay
bounded."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from monitor.cli.main import main
from monitor.config.policy import ModelPolicy
from monitor.engine.columns import EventColumns, extractors_for
from monitor.engine.discovery import (
    MAX_FEATURE_NAME_CHARS,
    MAX_TRACKED_FEATURES,
    ObservedSchema,
    compact,
    coverage,
    coverage_notes,
    resolved,
)
from monitor.engine.events import Event


def event(**fields: Any) -> Event:
    return msgspec.convert({"model": "m", **fields}, Event)


def observed(events: list[Event]) -> ObservedSchema:
    schema = ObservedSchema()
    schema.observe(events)
    return schema


def policy(**fields: Any) -> ModelPolicy:
    return ModelPolicy.model_validate(fields)


def names(found: list[Any]) -> list[str]:
    return [c.name for c in found]


RNG = random.Random(4)
#: 200 events with two numeric features, a categorical and a boolean one, and every field.
TYPICAL = observed(
    [
        event(
            features={
                "amount": RNG.gauss(0, 1),
                "age": RNG.randint(18, 90),
                "country": RNG.choice(["fr", "de"]),
                "mobile": RNG.random() < 0.5,
            },
            prediction=RNG.random(),
            confidence=RNG.random(),
            latency_ms=RNG.expovariate(0.05),
            error=RNG.random() < 0.01,
            feedback=int(RNG.random() < 0.3),
        )
        for _ in range(200)
    ]
)
ALL = [
    "features",
    "categories",
    "missing",
    "schema",
    "prediction",
    "confidence",
    "latency_ms",
    "error",
    "engagement",
]


def test_a_policy_naming_no_signal_watches_everything_the_events_carry() -> None:
    found = coverage(policy(), TYPICAL)
    assert names(found) == ALL
    by_name = {c.name: c for c in found}
    assert by_name["features"].policy.features == ["age", "amount"]
    assert by_name["categories"].policy.features == ["country", "mobile"]
    assert by_name["categories"].policy.detector_spec.type == "psi"
    assert by_name["missing"].policy.features == ["age", "amount", "country", "mobile"]
    assert by_name["engagement"].policy.detector_spec.type == "rate_window"
    assert {c.origin for c in found} == {"discovered"}
    assert by_name["features"].reason == "2 numeric features in the first 200 events"
    # The documented default levels: inputs warn, what users feel degrades.
    assert {c.name: c.policy.level for c in found} == {
        "features": "warn",
        "categories": "warn",
        "missing": "warn",
        "schema": "warn",
        "prediction": "warn",
        "confidence": "warn",
        "latency_ms": "degraded",
        "error": "degraded",
        "engagement": "degraded",
    }


def test_signals_auto_and_enabled_discover_beside_named_ones() -> None:
    assert policy(signals="auto").discovers
    named = [{"name": "errors", "source": "error"}]
    assert not policy(signals=named).discovers
    assert names(coverage(policy(signals=named), TYPICAL)) == ["errors"]
    assert names(coverage(policy(signals=named, auto={"enabled": True}), TYPICAL)) == [
        *ALL,
        "errors",
    ]
    assert names(coverage(policy(auto={"enabled": False}), TYPICAL)) == []


def test_a_named_signal_overrides_the_discovered_one_of_its_name_in_its_place() -> None:
    named = [
        {"name": "error", "source": "error", "thresholds": {"critical": 0.3}},
        {"name": "slow", "source": "latency_ms", "thresholds": {"warn": 500}},
    ]
    found = coverage(policy(signals=named, auto={"enabled": True}), TYPICAL)
    assert names(found) == [*ALL, "slow"]
    error = found[ALL.index("error")]
    assert error.origin == "overridden"
    assert error.policy.thresholds is not None and error.policy.thresholds.critical == 0.3
    assert error.reason.startswith("named in the policy, over: error rate")
    assert (found[-1].origin, found[-1].reason) == ("named", "named in the policy")


def test_ignore_by_signal_name_and_by_feature() -> None:
    chosen = policy(auto={"ignore": ["latency_ms", "engagement", "feature.country"]})
    found = coverage(chosen, TYPICAL)
    assert names(found) == [n for n in ALL if n not in ("latency_ms", "engagement")]
    by_name = {c.name: c for c in found}
    assert by_name["categories"].policy.features == ["mobile"]
    assert "country" not in (by_name["missing"].policy.features or [])
    # Not watched, yet expected: an ignored feature is no schema change.
    assert by_name["schema"].policy.expect is not None
    assert by_name["schema"].policy.expect["country"] == "categorical"
    notes = coverage_notes(chosen, TYPICAL)
    assert notes is not None
    assert notes.ignored_features == ["country"]
    assert notes.ignored_signals == ["engagement", "latency_ms"]


def test_an_ignored_name_that_is_not_discovered_ignores_nothing() -> None:
    chosen = policy(auto={"ignore": ["nope", "feature.nope"]})
    assert names(coverage(chosen, TYPICAL)) == ALL
    notes = coverage_notes(chosen, TYPICAL)
    assert notes is not None and notes.ignored_features == notes.ignored_signals == []


def test_a_named_feature_is_left_out_of_the_discovered_family() -> None:
    named = [
        {"name": "amount_drift", "source": "feature", "feature": "amount"},
        {"name": "geo", "source": "features", "features": ["country"]},
    ]
    found = {c.name: c for c in coverage(policy(signals=named, auto={"enabled": True}), TYPICAL)}
    assert found["features"].policy.features == ["age"]
    assert found["categories"].policy.features == ["mobile"]
    # Its missing rate is still watched (a named drift signal does not watch that).
    assert found["missing"].policy.features == ["age", "amount", "country", "mobile"]
    assert found["amount_drift"].origin == found["geo"].origin == "named"


def test_a_family_whose_features_are_all_named_is_not_discovered() -> None:
    named = [{"name": "n", "source": "features", "features": ["age", "amount"]}]
    found = names(coverage(policy(signals=named, auto={"enabled": True}), TYPICAL))
    assert "features" not in found and "categories" in found


@pytest.mark.parametrize("bound", [0, 1, 3])
def test_max_features_keeps_the_most_frequent_and_says_what_it_left_out(bound: int) -> None:
    events = [
        event(features={f"f{k}": float(i) for k in range(6) if i % (k + 1) == 0})
        for i in range(300)
    ]
    schema = observed(events)
    chosen = policy(auto={"max_features": bound})
    found = {c.name: c for c in coverage(chosen, schema)}
    kept = [f"f{k}" for k in range(bound)]  # f0 in every event, f1 in half, ...
    if bound:
        assert found["features"].policy.features == sorted(kept)
        assert found["features"].reason == (
            f"{bound} numeric features in the first 300 events; {6 - bound} more beyond "
            f"auto.max_features={bound} left unwatched "
            f"({', '.join(f'f{k}' for k in range(bound, min(6, bound + 5)))}"
            f"{', ...' if 6 - bound > 5 else ''})"
        )
    else:
        assert "features" not in found and "missing" not in found
    notes = coverage_notes(chosen, schema)
    assert notes is not None
    assert notes.left_out == [f"f{k}" for k in range(bound, 6)]
    assert notes.left_out_count == 6 - bound
    # Every feature seen is expected by the schema signal, watched or not.
    assert found["schema"].policy.expect == {f"f{k}": "numeric" for k in range(6)}


def test_the_choice_of_features_does_not_depend_on_the_order_of_events() -> None:
    events = [
        event(features={f"f{k}": 1.0 for k in range(40) if (i * 7 + k) % 3}) for i in range(90)
    ]
    chosen = policy(auto={"max_features": 10})
    one = coverage(chosen, observed(events))
    other = coverage(chosen, observed(list(reversed(events))))
    assert [(c.name, c.policy, c.reason) for c in one] == [
        (c.name, c.policy, c.reason) for c in other
    ]


def test_mixed_kinds_go_by_most_values_and_the_schema_accepts_both() -> None:
    events = [
        event(features={"score": "n/a" if i % 10 == 0 else float(i), "code": str(i % 3)})
        for i in range(100)
    ]
    schema = observed(events)
    found = {c.name: c for c in coverage(policy(), schema)}
    assert found["features"].policy.features == ["score"]
    assert found["categories"].policy.features == ["code"]
    expect = found["schema"].policy.expect
    assert expect == {"code": "categorical", "score": "any"}
    # Neither kind of `score` breaks the schema; a number for `code` or a new name does.
    assert breaks(found["schema"].policy, events) == [0.0] * 100
    assert breaks(
        found["schema"].policy,
        [
            event(features={"score": 1.0, "code": "a"}),
            event(features={"score": "x", "code": None}),
            event(features={"score": 1.0, "code": 2}),
            event(features={"score": 1.0, "new": 1.0}),
            event(features={"code": True}),
            event(),
        ],
    ) == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]


def breaks(signal: Any, events: list[Event]) -> list[float]:
    [(_, column)] = extractors_for(signal)
    values: list[float] = EventColumns(events).get(column).tolist()
    return values


def test_booleans_are_categories_not_numbers() -> None:
    events = [
        event(features={"flag": i % 3 == 0, "n": i}, prediction=i % 2 == 0) for i in range(50)
    ]
    found = {c.name: c for c in coverage(policy(), observed(events))}
    assert found["categories"].policy.features == ["flag"]
    assert found["features"].policy.features == ["n"]
    assert found["prediction"].policy.detector_spec.type == "psi"
    assert found["prediction"].reason == "categorical prediction in 50/50 events"


def test_a_prediction_that_is_sometimes_text_says_how_it_is_read() -> None:
    events = [event(prediction="unknown" if i % 5 == 0 else i / 100) for i in range(100)]
    found = {c.name: c for c in coverage(policy(), observed(events))}
    assert found["prediction"].policy.detector_spec.type != "psi"
    assert found["prediction"].reason == (
        "numeric prediction in 100/100 events; 20 of them not numbers (text reads as missing)"
    )
    labels = [event(prediction="cat" if i % 5 else 1.0) for i in range(100)]
    found = {c.name: c for c in coverage(policy(), observed(labels))}
    assert found["prediction"].reason.endswith("; 20 of them numbers, read as categories")


def test_features_always_null_or_rare_are_not_watched() -> None:
    events = [
        event(features={"a": float(i), "gone": None, **({"once": 1.0} if i == 7 else {})})
        for i in range(200)
    ]
    schema = observed(events)
    found = {c.name: c for c in coverage(policy(), schema)}
    assert found["features"].policy.features == ["a"]
    assert found["missing"].policy.features == ["a"]
    assert "gone" not in schema.features
    notes = coverage_notes(policy(), schema)
    assert notes is not None and notes.rare == ["once"] and notes.rare_count == 1
    # A rare feature is expected: its next appearance is no schema change.
    assert found["schema"].policy.expect == {"a": "numeric", "once": "numeric"}


def test_a_single_event_is_enough_to_discover() -> None:
    found = coverage(policy(), observed([event(features={"x": 1.0}, latency_ms=3.0)]))
    assert names(found) == ["features", "missing", "schema", "latency_ms", "error"]


def test_outcome_events_alone_give_no_error_rate() -> None:
    found = coverage(policy(), observed([event(request_id="r", label=1) for _ in range(10)]))
    assert "error" not in names(found)


def test_100k_distinct_names_stay_bounded_and_the_schema_is_left_unwatched() -> None:
    rng = random.Random(1)
    schema = ObservedSchema()
    for _ in range(10):
        schema.observe(
            [
                event(features={f"id-{rng.getrandbits(64):x}": 1.0 for _ in range(1000)})
                for _ in range(10)
            ]
        )
    assert schema.events == 100
    assert len(schema.features) == MAX_TRACKED_FEATURES
    assert schema.overflow == 100_000 - MAX_TRACKED_FEATURES
    chosen = policy()
    found = names(coverage(chosen, schema))
    # Each name in one event of 100: none is watched, nor is a schema that has no bound.
    assert found == ["error"]
    notes = coverage_notes(chosen, schema)
    assert notes is not None
    assert notes.rare_count == MAX_TRACKED_FEATURES and len(notes.rare) == 20
    assert notes.schema_unwatched is not None and "open-ended" in notes.schema_unwatched
    # The checkpoint form is bounded too, and round-trips.
    assert len(msgspec.msgpack.encode(schema.to_json())) < 200_000
    assert ObservedSchema.from_json(schema.to_json()) == schema
    # Once discovery is over, the rare names are forgotten (counted): the same coverage
    # and notes from what is left, which is what the model keeps and checkpoints.
    compact(chosen, schema)
    assert len(schema.features) == 20 and schema.dropped == MAX_TRACKED_FEATURES - 20
    assert names(coverage(chosen, schema)) == found
    assert coverage_notes(chosen, schema) == notes
    assert len(msgspec.msgpack.encode(schema.to_json())) < 2_000
    assert ObservedSchema.from_json(schema.to_json()) == schema
    compact(chosen, schema)
    assert schema.dropped == MAX_TRACKED_FEATURES - 20


def test_a_schema_that_is_not_open_ended_keeps_every_name() -> None:
    events = [event(features={"a": 1.0, **({f"r{i}": 1.0} if i < 30 else {})}) for i in range(300)]
    schema = observed(events)
    before = coverage(policy(), schema)
    compact(policy(), schema)
    assert len(schema.features) == 31 and schema.dropped == 0
    assert coverage(policy(), schema) == before


def test_compacting_1200_names_keeps_the_schema_open_ended() -> None:
    # 1,200 names, over the 1,000 a schema signal expects; 200 of them rare.
    events = [
        event(features={f"f{k}": 1.0 for k in range(500 * (i % 2), 500 * (i % 2) + 500)})
        for i in range(100)
    ]
    events += [event(features={f"rare{k}": 1.0}) for k in range(200)]
    schema = observed(events)
    chosen = policy(auto={"max_features": 1000})
    before = (coverage(chosen, schema), coverage_notes(chosen, schema))
    compact(chosen, schema)
    assert schema.dropped == 180
    assert (coverage(chosen, schema), coverage_notes(chosen, schema)) == before


def test_more_names_than_the_schema_signal_holds_leave_it_unwatched() -> None:
    # 1,200 names in all, 600 an event (an event holds at most 1,000).
    events = [
        event(features={f"f{k}": 1.0 for k in range(600 * (i % 2), 600 * (i % 2) + 600)})
        for i in range(6)
    ]
    found = {c.name: c for c in coverage(policy(auto={"max_features": 1000}), observed(events))}
    assert "schema" not in found
    assert found["features"].policy.features is not None
    assert len(found["features"].policy.features) == 1000


@pytest.mark.parametrize(
    "name",
    ["", " ", "a.b", "feature.x", "ünïcødé", "😀", "\x00", "x" * MAX_FEATURE_NAME_CHARS, "1e3"],
)
def test_any_feature_name_is_watched_as_it_is(name: str) -> None:
    events = [event(features={name: float(i), "other": 1.0}) for i in range(20)]
    found = {c.name: c for c in coverage(policy(), observed(events))}
    assert found["features"].policy.features is not None
    assert name in found["features"].policy.features
    [member] = [n for n, _ in extractors_for(found["features"].policy) if n == f"features.{name}"]
    assert member == f"features.{name}"


def test_a_name_too_long_is_not_tracked() -> None:
    long_name = "x" * (MAX_FEATURE_NAME_CHARS + 1)
    schema = observed([event(features={long_name: 1.0, "ok": 1.0}) for _ in range(20)])
    assert list(schema.features) == ["ok"] and schema.overflow == 20


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"events": 1, "fields": {}, "features": {"a": "not a list"}},
        {"events": 1, "fields": {}, "features": {"a": [1, 2]}},
        {"events": "many", "fields": {}, "features": {}},
        {"events": 1, "fields": [], "features": {}},
        {"events": 1, "fields": {}, "features": {f"f{k}": [1, 0, []] for k in range(2001)}},
    ],
)
def test_a_damaged_schema_is_refused_with_a_reason(raw: Any) -> None:
    with pytest.raises(ValueError, match="not an observed schema"):
        ObservedSchema.from_json(raw)


def test_resolved_is_the_covered_signals_with_discovery_off() -> None:
    chosen = policy(signals=[{"name": "slow", "source": "latency_ms"}], auto={"enabled": True})
    final = resolved(chosen, TYPICAL)
    assert [s.signal_name for s in final.signals] == [*ALL, "slow"]
    assert not final.discovers
    # Resolving it again, or building from it, changes nothing.
    assert resolved(final, TYPICAL) == final
    assert [c.origin for c in coverage(final, TYPICAL)] == ["named"] * (len(ALL) + 1)
    assert resolved(chosen, None) == chosen


def test_discover_within_is_a_duration_five_minutes_by_default() -> None:
    assert policy().auto.discover_within == 300.0
    assert policy(auto={"discover_within": "2m"}).auto.discover_within == 120.0


@pytest.mark.parametrize(
    ("auto", "expected"),
    [
        ({"discover_within": "0s"}, ":5: models.default.auto.discover_within: Input should be"),
        ({"discover_within": "soon"}, ":5: models.default.auto.discover_within: expected a dur"),
        ({"discover_events": 0}, ":5: models.default.auto.discover_events: Input should be"),
        ({"max_features": 5000}, ":5: models.default.auto.max_features: Input should be"),
        ({"ignore": "latency_ms"}, ":5: models.default.auto.ignore: Input should be a valid list"),
    ],
)
def test_a_bad_auto_section_is_named_by_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], auto: dict[str, Any], expected: str
) -> None:
    [(key, value)] = auto.items()
    path = tmp_path / "p.yaml"
    path.write_text(f"models:\n  default:\n    mode: enforce\n    auto:\n      {key}: {value}\n")
    assert main(["check-config", str(path)]) == 2
    out = capsys.readouterr().out
    assert f"{path}{expected}" in out, out
