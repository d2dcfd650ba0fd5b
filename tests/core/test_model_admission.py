"""Model admission (monitor/engine/admission.py): a flood of unknown model ids cannot keep a named
model or a new legitimate model unwatched; refused events are counted by reason; a model in
an incident or holding flags is never evicted; an eviction drops the model like the idle TTL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from alerts.base import Alert
from monitor.config.policy import Level, ModelPolicy, SignalPolicy
from monitor.config.settings import EngineSettings, Settings, StateSettings, load_settings
from monitor.daemon.daemon import Daemon
from monitor.engine.admission import Admission, CandidateSketch, Refusal
from monitor.engine.engine import Engine
from monitor.engine.events import Event
from monitor.errors import ConfigError
from monitor.flags.config import FlagdFileSpec
from monitor.observability.metrics import Metrics
from tests.core.kafka_helpers import json_record

POLICY = ModelPolicy.model_validate(
    {
        "mode": "shadow",
        "health": {"for": 0, "recover_after": 0, "cooldown": 0},
        "signals": [
            SignalPolicy.model_validate(
                {
                    "source": "error",
                    "detector": {
                        "type": "rate_window",
                        "window": 20,
                        "min_samples": 10,
                        "stride": 5,
                    },
                    "thresholds": {"degraded": 0.5},
                }
            )
        ],
    }
)


def events(model: str, count: int, *, error: bool = False) -> list[Event]:
    return [Event(model=model, error=error) for _ in range(count)]


def flood(count: int, prefix: str = "flood") -> list[Event]:
    """``count`` distinct model ids, one event each (e.g. a request id sent as the model)."""
    return [Event(model=f"{prefix}-{i}") for i in range(count)]


def degrade(engine: Engine, models: list[str], start: float) -> list[tuple[str, Level]]:
    """Feed ``models`` failing traffic until each has made a transition; the transitions."""
    seen: list[tuple[str, Level]] = []
    now = start
    for _ in range(10):
        now += 1.0
        batch = [e for model in models for e in events(model, 10, error=True)]
        seen += [(t.model, t.to_level) for t in engine.apply(batch, now)]
        if {model for model, _ in seen} == set(models):
            break
    return seen


def test_after_a_flood_of_100k_ids_a_named_and_a_new_model_are_watched_and_degrade() -> None:
    engine = Engine(lambda model: POLICY, max_models=10_000, named={"fraud"})
    engine.apply(flood(100_000), now=1.0)
    # The first 10,000 ids took every free slot; the other 90,000 stayed on probation.
    assert len(engine.models) == 10_000
    assert engine.refused_events == {Refusal.PROBATION: 90_000, Refusal.MODEL_LIMIT: 0}
    assert engine.dropped_events == 90_000
    # A named model, and a new legitimate one: it has more than one-shot traffic, so it
    # passes probation at once and takes the place of a one-shot id of the flood.
    engine.apply(events("fraud", 10) + events("checkout", 10), now=2.0)
    assert {"fraud", "checkout"} <= set(engine.models)
    assert engine.take_evicted() == ["flood-0"]
    assert len(engine.models) == 10_001  # named models do not count against max_models
    assert engine.refused_events == {Refusal.PROBATION: 90_000, Refusal.MODEL_LIMIT: 0}
    transitions = degrade(engine, ["fraud", "checkout"], start=2.0)
    assert ("fraud", Level.DEGRADED) in transitions
    assert ("checkout", Level.DEGRADED) in transitions


def test_a_named_model_is_admitted_when_unnamed_models_fill_max_models() -> None:
    engine = Engine(lambda model: POLICY, max_models=2, named={"fraud", "search"})
    # Two real unnamed models with steady traffic: proven, and in use.
    engine.apply(events("a", 5) + events("b", 5), now=1.0)
    engine.apply(events("fraud", 1) + events("search", 1) + events("c", 5), now=2.0)
    assert sorted(engine.models) == ["a", "b", "fraud", "search"]
    assert engine.refused_events == {Refusal.PROBATION: 0, Refusal.MODEL_LIMIT: 5}
    assert engine.admission.unnamed == 2


def test_a_one_shot_id_never_takes_a_slot_once_full_and_a_repeated_one_passes_probation() -> None:
    engine = Engine(lambda model: POLICY, max_models=2, admit_after_events=3)
    engine.apply(flood(2, prefix="old"), now=1.0)
    for i, now in enumerate((2.0, 3.0)):
        # The same id once per batch, among fresh one-shot ids: on probation twice.
        engine.apply(events("slow", 1) + flood(100, prefix=f"b{i}"), now=now)
        assert "slow" not in engine.models
    engine.apply(events("slow", 1), now=4.0)  # its third sighting within the window
    assert "slow" in engine.models
    assert engine.take_evicted() == ["old-0"]
    assert engine.refused_events == {Refusal.PROBATION: 2 + 200, Refusal.MODEL_LIMIT: 0}


def test_probation_forgets_sightings_older_than_two_windows() -> None:
    engine = Engine(lambda model: POLICY, max_models=1, probation_window_s=10.0)
    engine.apply(events("old", 1), now=0.0)
    for now in (1.0, 30.0, 60.0):  # one sighting per 30 s: never 3 within 10-20 s
        engine.apply(events("rare", 1), now=now)
    assert "rare" not in engine.models
    assert engine.refused_events[Refusal.PROBATION] == 3


def test_a_proven_model_is_evicted_only_after_evict_idle_s_without_events() -> None:
    engine = Engine(lambda model: POLICY, max_models=1, evict_idle_s=600.0)
    engine.apply(events("steady", 5), now=0.0)
    engine.apply(events("newcomer", 5), now=599.0)
    assert list(engine.models) == ["steady"]
    assert engine.refused_events == {Refusal.PROBATION: 0, Refusal.MODEL_LIMIT: 5}
    engine.apply(events("newcomer", 5), now=600.0)
    assert list(engine.models) == ["newcomer"]
    assert engine.take_evicted() == ["steady"]


@pytest.mark.parametrize("why", ["degraded", "recovering", "vetoed by the daemon"])
def test_a_model_in_an_incident_or_holding_actions_is_never_evicted(why: str) -> None:
    vetoed: set[str] = set()
    # When recovering: its recovery is still being timed when the newcomers come.
    health = POLICY.health.model_copy(update={"recover_after": 10_000.0})
    policy = POLICY.model_copy(update={"health": health}) if why == "recovering" else POLICY
    engine = Engine(
        lambda model: policy, max_models=1, evict_idle_s=1.0, may_evict=lambda m: m not in vetoed
    )
    engine.apply(events("held", 20, error=why != "vetoed by the daemon"), now=0.0)
    if why == "recovering":
        monitor = engine.models["held"]
        engine.apply(events("held", 20), now=1.0)
        assert monitor.health.level is Level.DEGRADED and not monitor.idle
    elif why == "degraded":
        assert engine.models["held"].health.level is Level.DEGRADED
    else:
        vetoed.add("held")
    for now in (100.0, 10_000.0):
        engine.apply(events("newcomer", 5), now=now)
        assert list(engine.models) == ["held"]
    assert engine.evicted == []
    assert engine.refused_events == {Refusal.PROBATION: 0, Refusal.MODEL_LIMIT: 10}


def test_a_restored_model_is_adopted_only_with_room_unless_named() -> None:
    engine = Engine(lambda model: POLICY, max_models=1, named={"fraud"})
    engine.apply(events("a", 1), now=0.0)
    spare = Engine(lambda model: POLICY, max_models=10)
    spare.apply(events("b", 1) + events("fraud", 1), now=0.0)
    assert not engine.adopt("b", spare.models["b"])
    assert engine.adopt("fraud", spare.models["fraud"])
    assert sorted(engine.models) == ["a", "fraud"]


def test_admission_and_sketch_reject_bad_parameters_with_the_parameter_named() -> None:
    for kwargs, name in (
        ({"max_models": 0}, "max_models"),
        ({"max_models": 1, "admit_after_events": 0}, "admit_after_events"),
        ({"max_models": 1, "evict_idle_s": 0.0}, "evict_idle_s"),
    ):
        with pytest.raises(ValueError, match=name):
            Admission(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="width"):
        CandidateSketch(window_s=1.0, width=1000)
    with pytest.raises(ValueError, match="window_s"):
        CandidateSketch(window_s=0.0)


def test_the_sketch_never_undercounts_and_one_shot_ids_rarely_reach_three() -> None:
    sketch = CandidateSketch(window_s=60.0)
    ids = [f"id-{i}" for i in range(100_000)]
    estimates = sketch.add(ids, [1] * len(ids), now=0.0)
    assert min(estimates) >= 1
    # With 2^18 counters per row and 4 rows, a one-shot id reads 3 only if it collides
    # with two others in every row: a handful at most, in 100,000.
    assert sum(e >= 3 for e in estimates) <= 20
    assert sketch.add(["id-7"], [2], now=1.0) >= [3]


def series_of(metrics: Metrics, model: str) -> list[str]:
    found = []
    for metric in metrics.registry.collect():
        for sample in metric.samples:
            if sample.labels.get("model") == model:
                found.append(sample.name)
    return found


async def test_the_daemon_unpublishes_and_forgets_the_checkpoint_of_an_evicted_model(
    tmp_path: Path,
) -> None:
    settings = Settings(
        engine=EngineSettings(max_models=2),
        flags=FlagdFileSpec(path=tmp_path / "flags.json"),
        state=StateSettings(backend="file", path=str(tmp_path / "state")),
        models={"default": POLICY, "fraud": POLICY},
    )
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(settings, metrics=metrics)
    assert daemon.store is not None
    await daemon.store.start()
    tp = TopicPartition("events", 0)
    offsets = iter(range(1_000_000))

    def batch(
        *bodies: dict[str, object],
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        return {tp: [json_record(tp, next(offsets), body) for body in bodies]}

    assert await daemon.batches.apply(batch({"model": "a"}, {"model": "b"}))
    daemon.publisher.publish(set(daemon.engine.models))
    daemon.metrics.transitions.labels("a", "ok", "warn").inc()
    assert await daemon.ownership.checkpoint({"a", "b"})
    assert sorted(await daemon.store.load_all()) == ["a", "b"]
    assert "driftwarden_model_health_level" in series_of(metrics, "a")
    # A one-shot id once full stays out; a new model with traffic evicts the oldest one-shot.
    assert await daemon.batches.apply(
        batch({"model": "x"}, *[{"model": "c"}] * 5, {"model": "fraud"})
    )
    assert sorted(daemon.engine.models) == ["b", "c", "fraud"]
    assert series_of(metrics, "a") == []
    assert sorted(await daemon.store.load_all()) == ["b"]
    get = metrics.registry.get_sample_value
    assert get("driftwarden_models_evicted_total") == 1
    assert get("driftwarden_events_refused_total", {"reason": "probation"}) == 1
    assert get("driftwarden_events_refused_total", {"reason": "model_limit"}) == 0
    assert get("driftwarden_events_applied_total") == 2 + 6
    assert daemon.status()["refused_events"] == {"probation": 1, "model_limit": 0}
    # The refused id left no trace in the checkpoint bookkeeping (it would grow with a flood).
    assert sorted(daemon.ownership.owned.partition) == ["b", "c", "fraud"]
    assert "x" not in daemon.ownership.owned.dirty


async def test_the_daemon_vetoes_evicting_a_model_that_holds_a_flag_or_an_open_alert(
    tmp_path: Path,
) -> None:
    settings = Settings(
        engine=EngineSettings(max_models=1),
        flags=FlagdFileSpec(path=tmp_path / "flags.json"),
        models={"default": POLICY},
    )
    daemon = Daemon(settings, metrics=Metrics.create(CollectorRegistry()))
    assert daemon._may_evict("quiet")
    daemon.actions.held["quiet"] = {"checkout.fallback": True}
    assert not daemon._may_evict("quiet")
    daemon.actions.held["quiet"] = {}
    assert daemon._may_evict("quiet")
    dispatcher = daemon.actions.dispatcher
    assert dispatcher is not None
    dispatcher.adopt(
        Alert(
            model="quiet",
            alertname="ModelUnhealthy",
            severity="page",
            state="degraded",
            signals=("error_rate",),
            summary="s",
            description="d",
            runbook_url="",
            starts_at=datetime.now(UTC),
        )
    )
    assert not daemon._may_evict("quiet")
    assert daemon._may_evict("other")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("admit_after_events", 0, "greater than or equal to 1"),
        ("admit_after_events", "three", "valid integer"),
        ("probation_window_s", 0, "greater than 0"),
        ("probation_window_s", 10**9, "less than or equal to 86400"),
        ("evict_idle_s", -1, "greater than 0"),
        ("max_models", 0, "greater than or equal to 1"),
    ],
)
def test_a_bad_admission_setting_is_refused_naming_the_file_and_field(
    tmp_path: Path, field: str, value: object, expected: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"engine": {field: value}}))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert len(caught.value.problems) == 1
    line = caught.value.problems[0]
    assert line.startswith(f"{path}:2: engine.{field}: ") and expected in line, line


def test_hostile_model_ids_are_counted_on_probation_like_any_other() -> None:
    engine = Engine(lambda model: POLICY, max_models=1)
    engine.apply(events("first", 1), now=0.0)
    hostile = ["", "\x00", "\ud800lone surrogate", "x" * 100_000, "ü" * 10, "a\nb", "'\""]
    engine.apply([Event(model=m) for m in hostile], now=1.0)
    assert list(engine.models) == ["first"]
    assert engine.refused_events[Refusal.PROBATION] == len(hostile)
    # Seen often enough, even an odd id gets its turn (it names a model, if a strange one).
    engine.apply([Event(model="\ud800lone surrogate")] * 3, now=2.0)
    assert "\ud800lone surrogate" in engine.models
