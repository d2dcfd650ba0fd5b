"""Events that wait (a model's detectors between tests) change nothing: an engine that defers
them and one that feeds every span at once see the same transitions, the same Readings after
every batch, and end in the same detector state."""

from __future__ import annotations

import math
import pickle
from typing import Any

import msgspec
import numpy as np
import pytest

from monitor.config.policy import ModelPolicy
from monitor.engine.engine import Engine
from monitor.engine.events import Event
from monitor.state.checkpoints import restore_model, snapshot_model

SMALL = {"window": 200, "stride": 50, "reference": {"size": 300}}
POLICY = ModelPolicy.model_validate(
    {
        "mode": "enforce",
        "health": {"for": "0s", "cooldown": "0s", "recover_after": "0s"},
        "signals": [
            {
                "name": "features",
                "source": "features",
                "features": ["f0", "f1", "f2"],
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
                "detector": {"type": "rate_window", **SMALL, "stride": 20},
            },
        ],
    }
)


def _events(
    rng: np.random.Generator, models: int, n: int, shift: float, holes: bool
) -> list[Event]:
    out = []
    for _ in range(n):
        m = int(rng.integers(models))
        drifting = m == 0 and shift > 0
        x = rng.normal(shift if drifting else 0.0, 1.0, 3)
        features: dict[str, Any] = {f"f{i}": float(x[i]) for i in range(3)}
        features["c0"] = str(rng.choice(["a", "b", "c"] if not drifting else ["c", "d"]))
        if holes and rng.random() < 0.05:
            features.pop(f"f{int(rng.integers(3))}")
        out.append(
            Event(
                model=f"m{m}",
                features=features,
                latency_ms=float(rng.lognormal(3.0, 0.3)) * (3.0 if drifting else 1.0),
                error=bool(rng.random() < (0.5 if drifting else 0.02)),
            )
        )
    return out


def _readings(monitor: Any) -> list[Any]:
    return [member.reading for signal in monitor.signals for member in signal.members]


def _same(a: Any, b: Any) -> bool:
    if a.verdict is not b.verdict or a.samples != b.samples:
        return False
    return all(
        x == y or (math.isnan(x) and math.isnan(y))
        for x, y in ((a.statistic, b.statistic), (a.effect, b.effect), (a.threshold, b.threshold))
    )


@pytest.mark.parametrize("holes", [False, True], ids=["complete", "missing-values"])
def test_deferring_engine_matches_the_feed_everything_engine(holes: bool) -> None:
    rng = np.random.default_rng(21)
    deferring = Engine(lambda model: POLICY, max_models=100)
    eager = Engine(lambda model: POLICY, max_models=100, defer=False)
    waited = 0
    saved_while_waiting = 0
    now = 0.0
    transitions = 0
    for batch in range(160):
        now += 0.25
        shift = 2.0 if 90 <= batch < 120 else 0.0
        size = int(rng.choice([40, 150, 600]))
        events = _events(rng, 20, size, shift, holes)
        before = {name: _readings(m) for name, m in deferring.models.items()}
        got = deferring.apply(events, now)
        want = eager.apply(events, now)
        # Models left out of `changed` (their /metrics are not republished) kept every Reading.
        unchanged = set(before) - set(deferring.changed)
        for name in unchanged:
            now_held = _readings(deferring.models[name])
            assert all(a is b for a, b in zip(now_held, before[name], strict=True)), name
        assert set(eager.changed) == {e.model for e in events}
        assert [(t.model, t.from_level, t.to_level) for t in got] == [
            (t.model, t.from_level, t.to_level) for t in want
        ]
        transitions += len(got)
        waited += sum(m.deferred_events > 0 for m in deferring.models.values())
        for name, monitor in deferring.models.items():
            other = eager.models[name]
            assert monitor.health.level is other.health.level
            for sa, sb in zip(monitor.signals, other.signals, strict=True):
                for ma, mb in zip(sa.members, sb.members, strict=True):
                    assert _same(ma.reading, mb.reading), (batch, name, ma.name)
        if batch % 40 == 38:
            saved_while_waiting += _save_and_restore(deferring, eager, now)
        if batch % 40 == 39:
            assert deferring.tick(now) == eager.tick(now) == []
    assert waited > 0, "no span ever waited: the test checks nothing"
    assert transitions > 0, "no transition: the drift never registered"
    # With holes in every other span, few spans wait: the complete stream covers saving.
    assert holes or saved_while_waiting > 0, "no model was saved while events waited"
    for name, monitor in deferring.models.items():
        monitor.flush(now)
        assert _checkpoint(monitor) == _checkpoint(eager.models[name]), name


def _save_and_restore(deferring: Engine, eager: Engine, now: float) -> int:
    """Checkpoint every deferring model; return how many had events waiting."""
    saved_while_waiting = 0
    for name, monitor in deferring.models.items():
        waiting = monitor.deferred_events
        held = [pickle.dumps(m.detector) for s in monitor.signals for m in s.members]
        saved = snapshot_model(monitor, None, None)
        # Saving changed nothing: the events still wait, every detector is as it was.
        assert monitor.deferred_events == waiting, name
        assert held == [pickle.dumps(m.detector) for s in monitor.signals for m in s.members]
        saved_while_waiting += waiting > 0
        # Restored, the waiting events are in the detectors: the state of the eager engine.
        restored = restore_model(saved, POLICY, now, None)
        assert _checkpoint(restored) == _checkpoint(eager.models[name]), name
    return saved_while_waiting


def _checkpoint(monitor: Any) -> dict[str, Any]:
    """A model's checkpoint (detector states as bytes) without its wall-clock stamp."""
    state: dict[str, Any] = msgspec.msgpack.decode(snapshot_model(monitor, None, None))
    state.pop("saved_at")
    return state
