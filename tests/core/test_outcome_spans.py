"""A batch that brings a model only outcome events (ground truth arriving on its own) leaves
the Readings of its inference signals as they were: a breach held for ``for`` goes on."""

from __future__ import annotations

from monitor.config.policy import Level, ModelPolicy
from monitor.engine.engine import Engine
from monitor.engine.events import Event

POLICY = ModelPolicy.model_validate(
    {
        "health": {"for": "30s"},
        "signals": [
            {
                "name": "error",
                "source": "error",
                "detector": {"type": "rate_window", "window": 200, "min_samples": 100},
                "thresholds": {"degraded": 0.05},
            },
            {"name": "label_error", "source": "label_error", "thresholds": {"degraded": 0.5}},
        ],
    }
)


def _inference(i: int, failed: bool) -> Event:
    return Event(model="m", prediction="a", error=failed, request_id=f"r{i}")


def _outcome(i: int) -> Event:
    return Event(model="m", request_id=f"r{i}", label="a")


def test_outcome_only_batches_do_not_end_a_breach_held_for_for() -> None:
    engine = Engine(lambda _m: POLICY, max_models=10, named=["m"])
    now, i, levels = 0.0, 0, []
    # 20% errors from the start: the error signal breaches once its window has 100 events;
    # every 10 s a batch of inference events, then one of their outcomes only.
    for _ in range(12):
        batch = [_inference(i + k, failed=k % 5 == 0) for k in range(100)]
        engine.apply(batch, now)
        engine.apply([_outcome(i + k) for k in range(100)], now + 5)
        i += 100
        now += 10
        levels.append(engine.models["m"].health.level)
    assert Level.DEGRADED in levels, levels
    error = next(s for s in engine.models["m"].signals if s.name == "error")
    assert error.members[0].reading.breached


def test_outcome_only_batches_still_feed_the_label_signals() -> None:
    engine = Engine(lambda _m: POLICY, max_models=10, named=["m"])
    engine.apply([_inference(k, failed=False) for k in range(300)], 0.0)
    label = next(s for s in engine.models["m"].signals if s.name == "label_error")
    engine.apply([_outcome(k) for k in range(300)], 1.0)
    assert label.members[0].reading.samples == 300
