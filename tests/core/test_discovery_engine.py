"""Discovery in the engine: a model whose policy discovers observes its first events, then
watches what they carried; its named signals behave as if there were no discovery; and a
checkpoint taken at any point of it (mid-discovery, at its end, long after) restores to the
same signals and the same readings as an uninterrupted run.
"""

from __future__ import annotations

import math
import random
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.base import Reading
from monitor.actions.audit import coverage_entry
from monitor.config.policy import ModelPolicy
from monitor.engine.discovery import MAX_TRACKED_FEATURES
from monitor.engine.engine import Engine, ModelMonitor, describe
from monitor.engine.events import Event
from monitor.engine.health import Transition
from monitor.state.checkpoints import restore_model, snapshot_model

SMALL = {"window": 200, "min_samples": 100, "stride": 20, "persist": 0}
#: Named signals beside discovery: one of its own, one over a discovered one's name.
NAMED = [
    {"name": "errors", "source": "error", "detector": {"type": "rate_window", **SMALL}},
    {
        "name": "latency_ms",
        "source": "latency_ms",
        "detector": {"type": "quantile", "q": 0.9, **SMALL, "reference": {"size": 300}},
    },
]
HEALTH = {"for": "0s", "cooldown": "0s", "recover_after": "0s"}
DISCOVERING = ModelPolicy.model_validate(
    {"auto": {"enabled": True, "discover_events": 150}, "health": HEALTH, "signals": NAMED}
)
NAMED_ONLY = ModelPolicy.model_validate({"health": HEALTH, "signals": NAMED})
BY_CLOCK = ModelPolicy.model_validate(
    {"auto": {"discover_events": 5000, "discover_within": "3s"}, "health": HEALTH}
)
STEP_S = 0.01
EVENTS = 12_600


def stream(n: int = EVENTS, seed: int = 5) -> list[Event]:
    """One model's events: every kind of member, drifting in its last 1,500 events."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        late = i >= n - 1500
        features: dict[str, Any] = {
            "amount": rng.gauss(1.0 if late else 0.0, 1.0),
            "age": rng.randint(18, 90),
            "country": rng.choice(["fr", "de", "it"] if not late else ["fr", "us"]),
            "mobile": rng.random() < 0.3,
        }
        if rng.random() < 0.1:
            features["age"] = None
        body = {
            "model": "m",
            "ts": 1_700_000_000.0 + i * STEP_S,
            "features": features,
            "prediction": rng.random(),
            "confidence": rng.random(),
            "latency_ms": rng.expovariate(1 / 20) * (4 if late and rng.random() < 0.2 else 1),
            "error": rng.random() < (0.2 if late else 0.01),
            "feedback": int(rng.random() < 0.3),
        }
        out.append(msgspec.convert(body, Event))
    return out


EVENTS_OF = stream()


def chunks(events: list[Event], size: int) -> list[tuple[float, list[Event]]]:
    return [
        (1_700_000_000.0 + (i + size) * STEP_S, events[i : i + size])
        for i in range(0, len(events), size)
    ]


def run(
    policy: ModelPolicy, events: list[Event], *, size: int = 37, cut: int | None = None
) -> tuple[ModelMonitor, list[Transition]]:
    """Feed ``events`` ``size`` at a time; at the chunk ending past event ``cut``, checkpoint
    the model and go on with the monitor restored from it (a kill and a restart)."""
    monitor = ModelMonitor.build("m", policy, 1_700_000_000.0)
    transitions = []
    done = 0
    for now, chunk in chunks(events, size):
        monitor.apply(chunk, now)
        found = monitor.evaluate(now)
        if found is not None:
            transitions.append(found)
        done += len(chunk)
        if cut is not None and done >= cut:
            data = snapshot_model(monitor, None, None)
            monitor = restore_model(data, policy, now, None)
            cut = None
    monitor.flush(1e12)
    return monitor, transitions


def _same_nan(value: Any) -> Any:
    """``value`` with every NaN spelled alike (NaN equals nothing, not even itself)."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return {k: _same_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_same_nan(v) for v in value]
    return value


def _reading(reading: Reading) -> Any:
    return _same_nan(
        [
            reading.verdict.value,
            reading.samples,
            reading.statistic,
            reading.effect,
            reading.threshold,
        ]
    )


def readings(monitor: ModelMonitor) -> dict[str, Any]:
    """Every member's Reading and detector state."""
    return {
        member.name: [
            _reading(member.reading),
            _same_nan(msgspec.msgpack.decode(member.detector.to_bytes())),
        ]
        for signal in monitor.signals
        for member in signal.members
    }


def shape(monitor: ModelMonitor) -> list[tuple[str, str, str]]:
    return [(c.name, c.origin, c.reason) for c in monitor.coverage()]


UNCUT, UNCUT_TRANSITIONS = run(DISCOVERING, EVENTS_OF)


def test_discovered_signals_watch_what_the_events_carry() -> None:
    assert [(name, origin) for name, origin, _ in shape(UNCUT)] == [
        ("features", "discovered"),
        ("categories", "discovered"),
        ("missing", "discovered"),
        ("schema", "discovered"),
        ("prediction", "discovered"),
        ("confidence", "discovered"),
        ("latency_ms", "overridden"),
        ("error", "discovered"),
        ("engagement", "discovered"),
        ("errors", "named"),
    ]
    signals = {s.name: s for s in UNCUT.signals}
    assert [m.name for m in signals["features"].members] == ["features.age", "features.amount"]
    assert [m.name for m in signals["categories"].members] == [
        "categories.country",
        "categories.mobile",
    ]
    assert signals["schema"].policy.expect == {
        "age": "numeric",
        "amount": "numeric",
        "country": "categorical",
        "mobile": "categorical",
    }
    assert UNCUT.schema is not None and UNCUT.schema.events == 150
    # The drift at the end: a warning of the input families, the error rate degrades.
    levels = {s.name: s.level.label for s in UNCUT.signals}
    assert levels["features"] == levels["categories"] == "warn"
    assert levels["error"] == "degraded"
    assert levels["missing"] == levels["schema"] == levels["confidence"] == "ok"
    assert [m.reading.verdict.value for m in signals["features"].members] == ["ok", "drift"]


def test_discovered_signals_start_with_the_event_after_discovery() -> None:
    monitor = ModelMonitor.build("m", DISCOVERING, 0.0)
    monitor.apply(EVENTS_OF[:149], 1.0)
    assert [s.name for s in monitor.signals] == ["errors", "latency_ms"]
    monitor.apply(EVENTS_OF[149:250], 2.0)
    monitor.flush(2.0)
    schema = next(s for s in monitor.signals if s.name == "schema")
    # The schema's rate window holds the 100 events after discovery, not its 150.
    assert schema.members[0].reading.samples == 100
    named, _ = run(NAMED_ONLY, EVENTS_OF[:250], size=250)
    assert {k: v for k, v in readings(monitor).items() if k in ("errors", "latency_ms")} == (
        readings(named)
    )


def test_named_signals_of_a_discovering_policy_behave_as_without_discovery() -> None:
    discovering = ModelMonitor.build("m", DISCOVERING, 0.0)
    plain = ModelMonitor.build("m", NAMED_ONLY, 0.0)
    for now, chunk in chunks(EVENTS_OF, 37):
        for monitor in (discovering, plain):
            monitor.apply(chunk, now)
            monitor.evaluate(now)
        # Chunk after chunk, the same Readings and levels (the deferral may differ).
        named = {s.name: s for s in discovering.signals if s.name in ("errors", "latency_ms")}
        for signal in plain.signals:
            twin = named[signal.name]
            assert twin.level is signal.level, (now, signal.name)
            assert _reading(twin.members[0].reading) == _reading(signal.members[0].reading)
    discovering.flush(1e12)
    plain.flush(1e12)
    with_discovery = readings(discovering)
    assert {k: with_discovery[k] for k in ("errors", "latency_ms")} == readings(plain)


@pytest.mark.parametrize("cut", [1, 37, 148, 150, 151, 185, 222, 5_000, 11_500, 12_580])
def test_a_checkpoint_at_any_point_restores_the_same_signals_and_readings(cut: int) -> None:
    restored, transitions = run(DISCOVERING, EVENTS_OF, cut=cut)
    assert shape(restored) == shape(UNCUT)
    assert readings(restored) == readings(UNCUT)
    assert [(t.at, t.to_level) for t in transitions] == [
        (t.at, t.to_level) for t in UNCUT_TRANSITIONS
    ]
    assert restored.discovering is False


@settings(max_examples=10, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=400),
    cut=st.integers(min_value=1, max_value=1_500),
)
def test_any_chunking_and_cut_point_discovers_the_same(size: int, cut: int) -> None:
    events = EVENTS_OF[:1_500]
    whole, _ = run(DISCOVERING, events, size=size)
    restored, _ = run(DISCOVERING, events, size=size, cut=cut)
    assert shape(restored) == shape(whole) == shape(UNCUT)
    assert readings(restored) == readings(whole)


def test_discovery_ends_on_the_clock_and_a_restore_keeps_its_start() -> None:
    events = EVENTS_OF[:2_000]
    whole, _ = run(BY_CLOCK, events, size=20)
    assert whole.schema is not None
    # 3 s of events 10 ms apart: discovery ends at the first span at or past 3 s.
    assert 280 <= whole.schema.events <= 320
    for cut in (20, 200, 400):
        restored, _ = run(BY_CLOCK, events, size=20, cut=cut)
        assert restored.schema is not None and restored.schema.events == whole.schema.events
        assert readings(restored) == readings(whole)


def test_a_model_with_few_events_gets_its_signals_on_the_tick() -> None:
    engine = Engine(lambda model: BY_CLOCK, max_models=10)
    engine.apply(EVENTS_OF[:3], 100.0)
    monitor = engine.models["m"]
    assert monitor.discovering and monitor.signals == []
    engine.tick(102.9)
    assert monitor.discovering
    engine.tick(103.0)
    assert not monitor.discovering
    assert "error" in [s.name for s in monitor.signals]
    [built] = engine.take_covered()
    assert engine.take_covered() == []
    entry = coverage_entry(built)
    assert entry["kind"] == "coverage" and entry["model"] == "m" and entry["at"] == 103.0
    error = next(s for s in entry["signals"] if s["name"] == "error")
    assert error == {
        "name": "error",
        "origin": "discovered",
        "reason": error["reason"],
        "source": "error",
        "detector": "rate_window",
        "level": "degraded",
    }
    assert "error rate" in error["reason"]


def test_status_says_where_each_signal_comes_from() -> None:
    engine = Engine(lambda model: DISCOVERING, max_models=10)
    engine.apply(EVENTS_OF[:100], 1.0)
    shown = describe(engine.models["m"])
    assert shown["coverage"]["state"] == "discovering"
    assert shown["coverage"]["events_observed"] == 100
    assert {name: s["origin"] for name, s in shown["signals"].items()} == {
        "errors": "named",
        "latency_ms": "named",
    }
    engine.apply(EVENTS_OF[100:300], 2.0)
    shown = describe(engine.models["m"])
    coverage = shown["coverage"]
    assert coverage["state"] == "watching" and coverage["events_observed"] == 150
    assert coverage["left_out"] == [] and coverage["ignored_features"] == []
    assert shown["signals"]["latency_ms"]["origin"] == "overridden"
    assert shown["signals"]["latency_ms"]["reason"].startswith("named in the policy, over: ")
    assert shown["signals"]["features"]["reason"] == "2 numeric features in the first 150 events"
    # A model whose policy does not discover says so.
    plain = Engine(lambda model: NAMED_ONLY, max_models=10)
    plain.apply(EVENTS_OF[:10], 1.0)
    assert describe(plain.models["m"])["coverage"] == {"discovers": False, "state": "watching"}


def test_a_checkpoint_without_a_schema_restores_as_before() -> None:
    monitor, _ = run(DISCOVERING, EVENTS_OF[:1_000])
    raw = msgspec.msgpack.decode(snapshot_model(monitor, None, None))
    assert raw["coverage"]["discovering"] is False
    del raw["coverage"]
    restored = restore_model(msgspec.msgpack.encode(raw), DISCOVERING, 10.0, None)
    # No schema: discovery starts again; the named signals continue from their state.
    assert restored.discovering
    assert [s.name for s in restored.signals] == ["errors", "latency_ms"]
    named = {k: v for k, v in readings(monitor).items() if k in ("errors", "latency_ms")}
    assert readings(restored) == named
    # A policy that does not discover writes no schema at all.
    plain, _ = run(NAMED_ONLY, EVENTS_OF[:500])
    assert "coverage" not in msgspec.msgpack.decode(snapshot_model(plain, None, None))


@pytest.mark.parametrize(
    "coverage",
    [
        "not a map",
        {"schema": {"events": "x"}, "discovering": False, "started_at": 0.0},
        {"schema": {"events": 3, "fields": [], "features": {}}, "discovering": False},
        {
            "schema": {"events": 3, "fields": {}, "features": {"a": [1]}},
            "discovering": False,
            "started_at": 0.0,
        },
    ],
)
def test_a_damaged_schema_in_a_checkpoint_starts_discovery_afresh(coverage: Any) -> None:
    monitor, _ = run(DISCOVERING, EVENTS_OF[:400])
    raw = msgspec.msgpack.decode(snapshot_model(monitor, None, None))
    raw["coverage"] = coverage
    restored = restore_model(msgspec.msgpack.encode(raw), DISCOVERING, 10.0, None)
    assert restored.discovering and restored.schema is not None
    assert restored.schema.events == 0


@pytest.mark.parametrize(
    ("change", "fires"),
    [
        ({"added": 1.0}, True),  # a feature appears
        ({"amount": "high"}, True),  # a numeric feature turns into text
        ({"amount": None}, False),  # nulls are the missing rate's, not a schema change
        ({}, False),
    ],
)
def test_the_schema_signal_warns_when_a_feature_appears_or_changes_kind(
    change: dict[str, Any], fires: bool
) -> None:
    rng = random.Random(9)
    schema_only = ModelPolicy.model_validate(
        {"health": HEALTH, "auto": {"ignore": ["missing", "features", "error"]}}
    )
    monitor = ModelMonitor.build("m", schema_only, 0.0)
    n, changed_at = 12_500, 11_000
    for start in range(0, n, 100):
        batch = [
            Event(
                model="m",
                features={"amount": rng.gauss(0, 1), **(change if i >= changed_at else {})},
            )
            for i in range(start, start + 100)
        ]
        monitor.apply(batch, float(start))
        monitor.evaluate(float(start))
    assert [s.name for s in monitor.signals] == ["schema"]
    assert monitor.signals[0].level.label == ("warn" if fires else "ok")


def test_a_model_flooded_with_names_keeps_little_and_restores_the_same() -> None:
    rng = random.Random(3)
    flood = [
        Event(
            model="m",
            features={
                "amount": rng.gauss(0, 1),
                **{f"id-{rng.getrandbits(48):x}": 1.0 for _ in range(20)},
            },
            latency_ms=10.0,
        )
        for _ in range(3_000)
    ]
    plain = ModelPolicy.model_validate({"health": HEALTH})
    whole, _ = run(plain, flood, size=50)
    assert whole.schema is not None
    # 4,000 names in discovery, past the 2,000 tracked: an open-ended schema, not watched;
    # the tracked names, each seen once, are forgotten but for the 20 the notes list.
    assert len(whole.schema.features) == 21
    assert whole.schema.dropped == MAX_TRACKED_FEATURES - 1 - 20
    assert whole.notes is not None and whole.notes.rare_count == MAX_TRACKED_FEATURES - 1
    assert whole.notes.schema_unwatched is not None
    assert [s.name for s in whole.signals] == ["features", "missing", "latency_ms", "error"]
    for cut in (100, 200, 250, 2_000):
        restored, _ = run(plain, flood, size=50, cut=cut)
        assert shape(restored) == shape(whole)
        assert restored.notes == whole.notes
        assert readings(restored) == readings(whole)
