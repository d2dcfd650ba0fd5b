"""The health tick evaluates, publishes and samples only the models the clock can move, and
shows the same as the tick that does all of them: a run of batches and ticks through
discovery (by count and by time), breaches, recoveries, a no-data rule, outcomes and models
that leave gives, step after step, the same transitions, /metrics (the Gauges and the kept
exposition text), /status and history with both.
"""

from __future__ import annotations

import json
import random
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from monitor.config.policy import Level, ModelPolicy
from monitor.engine.engine import Engine, ModelMonitor
from monitor.engine.events import Event
from monitor.engine.health import Transition
from monitor.observability.history import SignalHistory
from monitor.observability.metrics import Metrics
from monitor.observability.publisher import SeriesPublisher

#: The auto policy (discovery first) with a held breach, a timed recovery, a cooldown, a
#: no-data rule on latency and an outcome join.
POLICY = ModelPolicy.model_validate(
    {
        "auto": {"enabled": True, "discover_events": 30, "discover_within": 4},
        "health": {"for": 2, "recover_after": 3, "cooldown": 1},
        "signals": [
            {
                "name": "error_rate",
                "source": "error",
                "detector": {"type": "rate_window", "window": 20, "min_samples": 10, "stride": 5},
                "thresholds": {"warn": 0.1, "degraded": 0.2},
                "no_data": "warn",
                "no_data_after": 5,
            },
            {"source": "label_error"},
        ],
    }
)

#: The same without the no-data rule (its models' events may wait for a test: deferred)
#: and without a label signal (its models keep no outcome join until outcomes come).
DEFERRING = ModelPolicy.model_validate(
    {
        **POLICY.model_dump(by_alias=True, exclude_unset=True),
        "signals": [
            {**signal.model_dump(by_alias=True, exclude_unset=True), "no_data": None}
            for signal in POLICY.signals
            if signal.source.value != "label_error"
        ],
    }
)
#: The models outcomes come for.
LABELLED = ("fraud", "search", "quiet")

STEADY = ["fraud", 'quo"te', "ünï", "search", "churn", "ads"]


def events(model: str, n: int, rng: random.Random, *, bad: bool = False) -> list[Event]:
    return [
        Event(
            model=model,
            request_id=f"{model}-{rng.random()}",
            prediction=rng.random(),
            latency_ms=rng.gauss(80.0 if bad else 20.0, 3.0),
            error=rng.random() < (0.6 if bad else 0.02),
            features={"amount": rng.gauss(0.0, 1.0)},
        )
        for _ in range(n)
    ]


class Side:
    """One engine with its publisher and history, ticked the old way (``every``: every
    model evaluated, published and sampled) or the new one."""

    def __init__(self, *, every: bool) -> None:
        self.every = every
        self.engine = Engine(
            lambda model: POLICY if model in ("quiet", "fraud") else DEFERRING,
            max_models=100,
            seed=3,
            max_pending_outcomes=150,
        )
        self.registry = CollectorRegistry()
        self.metrics = Metrics.create(self.registry)
        self.publisher = SeriesPublisher(self.metrics, self.engine.models)
        self.wall = 0.0
        self.history = SignalHistory(points=40, step_s=2.5, wall_clock=lambda: self.wall)
        self.evaluated = 0

    def batch(self, batch: list[Event], now: float) -> list[Transition]:
        found = [t for part in self.engine.apply_stepwise(batch, now) for t in part]
        self.publisher.count_events(self.engine.received)
        self.publisher.publish(set(self.engine.changed))  # as the batch applier does
        return found

    def tick(self, now: float, wall: float) -> list[Transition]:
        self.wall = wall
        engine = self.engine
        if self.every:
            for monitor in engine.models.values():
                monitor.unevaluated = True  # what the tick did before: evaluate them all
            found = engine.tick(now)
            self.publisher.publish(set(engine.models))
            self.history.record(engine.models, now)
        else:
            found = engine.tick(now)
            moved = engine.take_moved()
            self.publisher.publish_tick(engine.ticked, moved)
            self.history.record(engine.models, now, moved)
        self.evaluated += len(engine.ticked)
        return found

    def drop(self, model: str) -> None:
        self.publisher.unpublish(model, counters=True)
        self.engine.drop(model)

    def shown(self) -> tuple[list[str], list[str], Any, Any]:
        # Samples in any order (series are made in the order of a set's models); a
        # counter's ``_created`` is when it was made (a process's start): not compared.
        lines = generate_latest(self.registry).decode().splitlines()
        return (
            sorted(line for line in lines if "_created" not in line),
            sorted(b"".join(self.publisher.exposition()).decode().splitlines()),
            json.loads(json.dumps(self.engine.snapshot(), default=str)),
            json.loads(json.dumps(self.history.snapshot())),
        )


def test_the_tick_shows_what_evaluating_every_model_shows() -> None:
    old, new = Side(every=True), Side(every=False)
    rng = random.Random(17)
    now, wall = 1000.0, 5000.0
    transitions: list[Transition] = []
    ended_on_clock = False
    for step in range(90):
        now += 1.0
        wall += 1.0 + (step % 4) * 0.45  # ticks not on the step: some samples share a point
        batch: list[Event] = []
        for i, model in enumerate(STEADY):
            if step % (i + 2) == 0:  # each model its own rhythm; some wait for several ticks
                bad = (model == "fraud" and 20 <= step < 35) or (model == "ads" and 50 <= step < 60)
                batch += events(model, 12, rng, bad=bad)
        # Events every second (published by each batch), its health moved on the tick too.
        batch += events("always", 6, rng, bad=60 <= step < 68)
        if step == 5:
            batch += events("quiet", 3, rng)  # discovery ends on the clock, then no data
        if step % 7 == 3:
            batch += [
                Event(model=e.model, request_id=e.request_id, label=float(rng.random() < 0.3))
                for e in batch[::3]
                if e.request_id is not None and e.model in LABELLED
            ]
        at = now - 0.2 * (step % 5)  # the batch comes before the tick in its second
        if batch:
            rng_state = rng.getstate()
            found = old.batch(batch, at)
            assert repr(new.batch(batch, at)) == repr(found)  # NaN effects
            rng.setstate(rng_state)
            transitions += found
        quiet = old.engine.models.get("quiet")
        discovering = quiet is not None and quiet.discovering
        found = old.tick(now, wall)
        assert repr(new.tick(now, wall)) == repr(found), f"step {step}"
        ended_on_clock |= discovering and quiet is not None and not quiet.discovering
        transitions += found
        if step == 70:
            old.drop("churn")
            new.drop("churn")
        if step == 40:  # restored in place of its monitor: nothing received since
            for side in (old, new):
                side.drop("search")
                assert side.engine.adopt("search", ModelMonitor.build("search", DEFERRING, now))
        assert new.shown() == old.shown(), f"step {step}"
    # The run went through what the tick may move.
    assert ended_on_clock
    assert any(t.from_level is Level.OK and t.to_level > Level.OK for t in transitions)
    assert any(t.to_level < t.from_level for t in transitions)  # a recovery
    assert any(
        t.model == "quiet" and any(c.signal == "error_rate" for c in t.causes) for t in transitions
    ), "the no-data rule fired on the clock"
    # ... evaluating far fewer models than all of them.
    assert new.evaluated < old.evaluated / 2, (new.evaluated, old.evaluated)


def test_a_model_fed_outside_an_evaluation_is_evaluated_at_the_tick() -> None:
    """A monitor whose Readings changed with no evaluation after (e.g. waiting events fed
    when signals were added) is not ``idle``-skipped: the tick evaluates it."""
    engine = Engine(lambda model: POLICY, max_models=10)
    rng = random.Random(2)
    for k in range(6):
        engine.apply(events("m", 12, rng), 100.0 + k)
    engine.tick(107.0)
    monitor: ModelMonitor = engine.models["m"]
    assert monitor.idle and not monitor.unevaluated
    engine.tick(108.0)
    assert engine.ticked == []  # nothing moved on the clock
    monitor.flush(108.5)
    monitor.unevaluated = True  # as ``_feed`` sets it
    engine.tick(109.0)
    assert engine.ticked == ["m"]
    assert engine.take_moved() == {"m"}
    assert engine.take_moved() == set()
