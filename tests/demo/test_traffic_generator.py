"""The shared traffic generator's knobs on a real broker (weights, incidents begun and ended by
hand, ``ts`` on or off, a duration, the acknowledged-event hook), its offline stream, and the
refusal of every bad knob with a message naming it."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from typing import Any

import pytest

from monitor.tools.embedded_broker import EmbeddedBroker
from monitor.tools.traffic import (
    ErrorEvents,
    TrafficGenerator,
    event_stream,
    make_event,
    synthetic_batches,
)
from tests.conftest import wait_for
from tests.core.kafka_helpers import create_topic, read_all

pytestmark = pytest.mark.integration


async def test_weighted_timed_traffic_with_a_manual_incident_lands_as_acknowledged(
    broker: EmbeddedBroker, unique: str
) -> None:
    topic = f"traffic-{unique}"
    await create_topic(broker.bootstrap_servers, topic, partitions=2)
    seen: list[dict[str, Any]] = []
    traffic = TrafficGenerator(
        broker.bootstrap_servers,
        topic,
        rate_per_model=100.0,
        models=("quiet", "busy"),
        script=(),
        make=ErrorEvents(error_rate=0.0, surge_error_rate=1.0),
        weights={"busy": 3.0},
        timestamps=True,
        duration_s=3.0,
        observe=seen.append,
    )
    traffic.begin("quiet", "error_surge")
    wall_before = time.time()
    async with traffic:
        await wait_for(
            lambda: sum(e["model"] == "quiet" for e in seen) >= 20, what="20 quiet events"
        )
        traffic.end("quiet", "error_surge")
        await traffic.finished()
    wall_after = time.time()

    records = await read_all(broker.bootstrap_servers, topic, len(seen), drain_ms=300)
    bodies = [json.loads(r.value) for r in records]
    # What the hook saw is what the topic holds, each record keyed by its model.
    assert sorted(b["request_id"] for b in bodies) == sorted(e["request_id"] for e in seen)
    assert all(r.key == json.loads(r.value)["model"].encode() for r in records)
    assert traffic.produced == len(seen)
    # Three busy events per quiet one, to the rounding of each model's own account.
    per_model = Counter(e["model"] for e in seen)
    assert abs(per_model["busy"] - 3 * per_model["quiet"]) <= 4, per_model
    assert per_model["quiet"] >= 20
    # Every event has its production time.
    assert all(wall_before <= e["ts"] <= wall_after for e in seen)
    # The incident is the quiet model's alone, and its errors stop where it was ended.
    quiet_errors = [e["error"] for e in seen if e["model"] == "quiet"]
    ended_at = quiet_errors.index(False)
    assert ended_at >= 20 and all(quiet_errors[:ended_at]) and not any(quiet_errors[ended_at:])
    assert not any(e["error"] for e in seen if e["model"] == "busy")


async def test_without_timestamps_events_carry_no_ts_and_the_demo_maker_is_the_default(
    broker: EmbeddedBroker, unique: str
) -> None:
    topic = f"traffic-{unique}"
    await create_topic(broker.bootstrap_servers, topic)
    seen: list[dict[str, Any]] = []
    async with TrafficGenerator(
        broker.bootstrap_servers, topic, rate_per_model=50.0, observe=seen.append
    ) as traffic:
        await wait_for(lambda: len(seen) >= 30, what="30 demo events")
    assert traffic.make is make_event
    assert {e["model"] for e in seen} == set(traffic.models)
    assert not any("ts" in e for e in seen)


def test_event_stream_takes_turns_follows_incidents_and_times_events_only_with_t0() -> None:
    surge = {"b": lambda i: frozenset({"error_surge"}) if i >= 4 else frozenset()}
    make = ErrorEvents(error_rate=0.0, surge_error_rate=1.0)
    events = list(event_stream(8, make, models=("a", "b"), incidents=surge, t0=10.0, step_s=2.0))
    assert [e["model"] for e in events] == ["a", "b"] * 4
    assert [e["error"] for e in events] == [False] * 5 + [True, False, True]
    assert [e["ts"] for e in events] == [10.0 + 2.0 * i for i in range(8)]
    assert not any("ts" in e for e in event_stream(4, make, models=("a",)))
    # The same seed, the same stream.
    scored = ErrorEvents(scored=True)
    assert list(event_stream(50, scored, seed=4)) == list(event_stream(50, scored, seed=4))


def test_synthetic_batches_are_reproducible_and_cover_every_model() -> None:
    first = [v for _, values in synthetic_batches(2000, 5, seed=3, chunk=700) for v in values]
    again = [v for _, values in synthetic_batches(2000, 5, seed=3, chunk=700) for v in values]
    assert first == again and len(first) == 2000
    assert {json.loads(v)["model"] for v in first} == {f"model-{i:04d}" for i in range(5)}


@pytest.mark.parametrize(
    ("knobs", "named"),
    [
        ({"rate_per_model": 0.0}, "rate_per_model"),
        ({"rate_per_model": -5.0}, "rate_per_model"),
        ({"weights": {"nobody": 2.0}}, "'nobody'"),
        ({"weights": {"fraud-scorer": 0.0}}, "'fraud-scorer'"),
        ({"weights": {"fraud-scorer": float("nan")}}, "'fraud-scorer'"),
        ({"duration_s": 0.0}, "duration_s"),
        ({"duration_s": -1.0}, "duration_s"),
    ],
)
def test_a_bad_generator_knob_is_refused_naming_it(knobs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        TrafficGenerator("127.0.0.1:1", "topic", **knobs)


@pytest.mark.parametrize(
    "knobs",
    [{"error_rate": -0.1}, {"error_rate": 1.5}, {"surge_error_rate": 2.0}, {"error_rate": 1e309}],
)
def test_an_error_rate_outside_0_1_is_refused_naming_it(knobs: dict[str, float]) -> None:
    (name,) = knobs
    with pytest.raises(ValueError, match=name):
        ErrorEvents(**knobs)


async def test_incidents_only_for_the_traffic_models_and_no_send_before_start() -> None:
    traffic = TrafficGenerator("127.0.0.1:1", "topic", models=("a",), script=())
    with pytest.raises(ValueError, match="'b'"):
        traffic.begin("b", "error_surge")
    traffic.end("a", "error_surge")  # ending what never began is no error
    with pytest.raises(RuntimeError, match="not started"):
        await traffic.send({"model": "a"})
    with pytest.raises(RuntimeError, match="duration_s"):
        await traffic.finished()
    with pytest.raises(ValueError, match="at least one model"):
        list(event_stream(1, ErrorEvents(), models=()))
    assert ErrorEvents()("a", 0, frozenset(), random.Random(0))["request_id"] == "a-0"
