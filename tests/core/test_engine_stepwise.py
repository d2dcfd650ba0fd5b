"""A transition is handed over as soon as its model is evaluated, before the rest of the
batch: the flag write and the page start while later models are still being worked on. With
detector banks every model's events go in first (one pass per bank for the whole batch), then
the models are evaluated one by one and handed over; per object, each model is applied and
evaluated in turn."""

from __future__ import annotations

import pytest

from monitor.config.policy import Level, ModelPolicy, SignalPolicy
from monitor.engine.engine import Engine
from monitor.engine.events import Event

POLICY = ModelPolicy.model_validate(
    {
        "mode": "enforce",
        "health": {"for": "0s"},
        "signals": [
            SignalPolicy.model_validate(
                {
                    "source": "error",
                    "detector": {
                        "type": "rate_window",
                        "window": 20,
                        "min_samples": 10,
                        "stride": 5,
                        "persist": 0,
                    },
                    "thresholds": {"degraded": 0.5},
                }
            )
        ],
    }
)


@pytest.mark.parametrize("banks", [True, False], ids=["banks", "per-object"])
def test_transition_is_handed_over_before_later_models_are_evaluated(banks: bool) -> None:
    engine = Engine(lambda model: POLICY, max_models=1000, banks=banks)
    # "failing" appears first in the batch, then 200 healthy models.
    batch = [Event(model="failing", error=True) for _ in range(20)]
    batch += [Event(model=f"ok{m}", error=False) for _ in range(20) for m in range(200)]
    steps = engine.apply_stepwise(batch, now=1.0, step=64)
    first = next(steps)
    assert [(t.model, t.to_level) for t in first] == [("failing", Level.DEGRADED)]
    evaluated = [m for m in engine.models.values() if m.observations]
    assert [m.model for m in evaluated] == ["failing"], "later models waited for the hand-over"
    if not banks:
        applied = [m for m in engine.models.values() if m.events]
        assert [m.model for m in applied] == ["failing"], "later models were applied first"
    rest = list(steps)
    # Between the hand-over and the end: a pause point every 64 models, no transition.
    assert rest == [[], [], []]
    assert all(m.events == 20 for m in engine.models.values())


@pytest.mark.parametrize("banks", [True, False], ids=["banks", "per-object"])
def test_apply_returns_every_transition_of_the_batch_in_model_order(banks: bool) -> None:
    engine = Engine(lambda model: POLICY, max_models=1000, banks=banks)
    batch = [Event(model=m, error=True) for _ in range(20) for m in ("b", "a", "c")]
    assert [t.model for t in engine.apply(batch, now=1.0)] == ["b", "a", "c"]
