"""The tick feeds a model's waiting events only once the oldest has waited ``flush_after_s``
(``monitor.engine.engine.FLUSH_AFTER_S``); waiting longer changes nothing.

The same batches and ticks go through an engine that feeds every waiting span at every tick
(``flush_after_s=0``, the behaviour before) and one with the bound: models that defer (busy
ones reaching their stride between ticks, quiet ones waiting many ticks), values missing now
and then (a span that cannot wait), a drift and its recovery, a ``no_data`` rule firing on the
clock, discovery ending by count inside a batch and by the clock at a tick with events waiting,
and every model checkpointed and restored (a rebalance) twice. After every batch and every tick
both sides give the same transitions, Readings (with the ``last_conclusive_at`` a checkpoint
saves), /status, /metrics and history, and every model's checkpoint restores to the same
bytes (the raw bytes are equal when neither side has events waiting). The bounded side never
holds a span past the bound after a tick, and it does keep spans waiting across ticks.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitor.config.policy import Level, ModelPolicy
from monitor.engine.engine import FLUSH_AFTER_S, Engine, ModelMonitor
from monitor.engine.events import Event
from monitor.observability.history import SignalHistory
from monitor.observability.metrics import Metrics
from monitor.observability.publisher import SeriesPublisher
from monitor.state.checkpoints import restore_model, snapshot_model
from tests.core.reading_bits import reading_bits

SMALL = {"window": 60, "min_samples": 40, "stride": 20, "persist": 0, "reference": {"size": 100}}
HEALTH = {"for": "0s", "cooldown": "0s", "recover_after": "1s"}
DEFERRING = ModelPolicy.model_validate(
    {
        "health": HEALTH,
        "signals": [
            {
                "name": "features",
                "source": "features",
                "features": ["f0", "f1"],
                "detector": {"type": "ks_window", **SMALL},
            },
            {
                "name": "category",
                "source": "feature",
                "feature": "c0",
                "detector": {"type": "psi", **SMALL},
            },
            {"name": "latency", "source": "latency_ms", "detector": {"type": "quantile", **SMALL}},
            {
                "name": "errors",
                "source": "error",
                "detector": {"type": "rate_window", **SMALL, "stride": 10},
            },
        ],
    }
)
#: A ``no_data`` rule reads every Reading: such a model never defers.
NO_DATA = ModelPolicy.model_validate(
    {
        "health": HEALTH,
        "signals": [
            {
                "name": "latency",
                "source": "latency_ms",
                "detector": {"type": "quantile", **SMALL},
                "no_data": "warn",
                "no_data_after": "2s",
            }
        ],
    }
)
NAMED = [
    {"name": "errors", "source": "error", "detector": {"type": "rate_window", **SMALL}},
    {"name": "latency", "source": "latency_ms", "detector": {"type": "quantile", **SMALL}},
]
#: Discovery ended by count, inside a batch.
BY_COUNT = ModelPolicy.model_validate(
    {"auto": {"enabled": True, "discover_events": 150}, "health": HEALTH, "signals": NAMED}
)
#: Discovery ended by the clock, at a tick, while its named signals hold events back: its
#: first event comes with batch 0 (at 1,000.25), so it is due at 1,013.05, after batch 51
#: (1,013.0) and before the tick after it (1,013.1); batch 50 brings it an event.
BY_CLOCK = ModelPolicy.model_validate(
    {
        "auto": {"enabled": True, "discover_events": 100_000, "discover_within": "12.8s"},
        "health": HEALTH,
        "signals": NAMED,
    }
)
POLICIES = {"m": DEFERRING, "n": NO_DATA, "a": BY_COUNT, "c": BY_CLOCK}

#: Busy models get several events a batch, quiet ones one every few batches.
BUSY = ["m0", "m1", "a0", "n0"]
QUIET = ["m2", "m3", "m4", "c0", "n1"]
STEP_S = 0.25
TICK_EVERY = 4  # batches


def policy_for(model: str) -> ModelPolicy:
    return POLICIES[model[0]]


def _event(rng: np.random.Generator, model: str, drifting: bool, hole: bool = False) -> Event:
    x = rng.normal(2.5 if drifting else 0.0, 1.0, 2)
    features: dict[str, Any] = {"f0": float(x[0]), "f1": float(x[1])}
    features["c0"] = str(rng.choice(["c", "d"] if drifting else ["a", "b", "c"]))
    if hole:
        features.pop(f"f{int(rng.integers(2))}")
    return Event(
        model=model,
        features=features,
        prediction=float(rng.random()),
        confidence=float(rng.random()),
        latency_ms=float(rng.lognormal(3.0, 0.3)) * (3.0 if drifting else 1.0),
        error=bool(rng.random() < (0.6 if drifting else 0.02)),
    )


def _batch(rng: np.random.Generator, b: int) -> list[Event]:
    filling = b < 16
    # m0 drifts for a while, then recovers; m3 (quiet) drifts too.
    drifting = {"m0"} if 60 <= b < 80 else {"m3"} if 90 <= b < 130 else set()
    events = []
    for model in BUSY:
        n = int(rng.integers(20, 60)) if filling else int(rng.integers(0, 12))
        events += [_event(rng, model, model in drifting) for _ in range(n)]
    for model in QUIET:
        n = int(rng.integers(15, 40)) if filling else int(rng.random() < 0.2)
        events += [_event(rng, model, model in drifting) for _ in range(n)]
    if b == 50:
        events.append(_event(rng, "c0", False))
    if b >= 100:  # created late and quiet: inconclusive long enough for its no_data rule
        events += [_event(rng, "n2", False) for _ in range(int(rng.random() < 0.5))]
    if rng.random() < 0.07:
        # A value missing: no model of the batch can wait (its waiting spans go in first).
        events.append(_event(rng, str(rng.choice(["m1", "m2"])), False, hole=True))
    order = rng.permutation(len(events))
    return [events[i] for i in order]


class Side:
    """One engine with the publisher and history of a daemon."""

    def __init__(self, flush_after_s: float) -> None:
        self.engine = Engine(policy_for, max_models=50, flush_after_s=flush_after_s)
        self.registry = CollectorRegistry()
        self.publisher = SeriesPublisher(Metrics.create(self.registry), self.engine.models)
        self.wall = 0.0
        self.history = SignalHistory(wall_clock=lambda: self.wall, step_s=1.0)

    def batch(self, events: list[Event], now: float) -> list[Any]:
        got = self.engine.apply(events, now)
        self.publisher.count_events(self.engine.received)
        self.publisher.publish(set(self.engine.changed))
        return [(t.model, int(t.from_level), int(t.to_level), t.at) for t in got]

    def tick(self, now: float) -> list[Any]:
        self.wall = now
        got = self.engine.tick(now)
        moved = self.engine.take_moved()
        self.publisher.publish_tick(self.engine.ticked, moved)
        self.history.record(self.engine.models, now, moved)
        return [(t.model, int(t.from_level), int(t.to_level), t.at) for t in got]

    def rebalance(self, now: float) -> None:
        """Every model saved, dropped and restored from its checkpoint (a partition moving)."""
        for model, monitor in list(self.engine.models.items()):
            data = snapshot_model(monitor, None, None)
            self.engine.drop(model)
            assert self.engine.adopt(model, restore_model(data, policy_for(model), now, None))

    def shown(self) -> tuple[Any, ...]:
        lines = generate_latest(self.registry).decode().splitlines()
        return (
            sorted(line for line in lines if "_created" not in line),
            json.dumps(self.engine.snapshot(), default=str, sort_keys=True),
            json.dumps(self.history.snapshot(), sort_keys=True),
        )


def readings(engine: Engine) -> dict[str, Any]:
    """Every member's Reading and the ``last_conclusive_at`` its checkpoint saves."""
    return {
        model: [
            (s.name, m.name, reading_bits(m.reading), monitor.conclusive_at(m))
            for s in monitor.signals
            for m in s.members
        ]
        for model, monitor in engine.models.items()
    }


def _raw(monitor: ModelMonitor) -> bytes:
    state: dict[str, Any] = msgspec.msgpack.decode(snapshot_model(monitor, None, None))
    state.pop("saved_at")
    return msgspec.msgpack.encode(state)


def _restored(monitor: ModelMonitor, now: float) -> bytes:
    """The checkpoint of the monitor a restore of ``monitor``'s checkpoint continues with."""
    data = snapshot_model(monitor, None, None)
    return _raw(restore_model(data, policy_for(monitor.model), now, None))


def test_the_bounded_tick_matches_the_tick_that_feeds_every_waiting_span() -> None:
    assert FLUSH_AFTER_S >= 2 * TICK_EVERY * STEP_S  # quiet models wait several ticks
    rng = np.random.default_rng(16)
    every, bounded = Side(0.0), Side(FLUSH_AFTER_S)
    now = 1_000.0
    levels: set[tuple[str, int]] = set()
    waited_over_ticks = flushed_by_bound = raw_compared = 0
    clock_ended_waiting = False
    for b in range(200):
        now += STEP_S
        events = _batch(rng, b)
        got = every.batch(events, now)
        assert bounded.batch(events, now) == got, b
        levels.update((t[0], t[2]) for t in got)
        if b % TICK_EVERY == TICK_EVERY - 1:
            at = now + 0.1
            engine = bounded.engine
            due = {
                name
                for name, m in engine.models.items()
                if m.deferred and m.flush_due(at, FLUSH_AFTER_S)
            }
            flushed_by_bound += len(due)
            clock_ended_waiting |= any(
                m.discovering and m.discovery_due(at) and m.deferred for m in engine.models.values()
            )
            got = every.tick(at)
            assert bounded.tick(at) == got, b
            levels.update((t[0], t[2]) for t in got)
            for name, monitor in engine.models.items():
                assert not every.engine.models[name].deferred, name  # bound 0: all fed
                if monitor.deferred_since is not None:
                    # The bound, for every model (it bounds the batches' columns held).
                    assert at - monitor.deferred_since < FLUSH_AFTER_S, (b, name)
                    waited_over_ticks += 1
            assert not due & {n for n, m in engine.models.items() if m.deferred}, b
        assert readings(bounded.engine) == readings(every.engine), b
        assert bounded.shown() == every.shown(), b
        for name, monitor in bounded.engine.models.items():
            other = every.engine.models[name]
            assert _restored(monitor, now) == _restored(other, now), (b, name)
            if not monitor.deferred and not other.deferred:
                assert _raw(monitor) == _raw(other), (b, name)
                raw_compared += 1
        if b in (70, 140):
            every.rebalance(now)
            bounded.rebalance(now)
    # What the run went through, else it would check less than it says.
    assert waited_over_ticks > 50, waited_over_ticks
    assert flushed_by_bound >= 8, flushed_by_bound
    assert clock_ended_waiting, "no discovery ended on the clock with events waiting"
    assert not bounded.engine.models["c0"].discovering
    assert raw_compared > 0
    assert ("m0", int(Level.OK)) in levels and any(lvl > 0 for m, lvl in levels if m == "m0")
    assert any(m.startswith("n") and lvl == int(Level.WARN) for m, lvl in levels), levels


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_a_bound_that_is_no_duration_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="flush_after_s must be a finite number >= 0"):
        Engine(policy_for, max_models=1, flush_after_s=bad)
