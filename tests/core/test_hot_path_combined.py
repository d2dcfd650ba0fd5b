"""The three parts of the columnar hot path together against the reference path: records
decoded straight into columns (``ColumnarPath``) and fed to banked detectors give, batch after
batch, the Readings and transitions of the event decoder feeding per-object detectors.

Each part was tested alone against the old path; here they meet, on random streams of small
detectors (banked within a few batches): named and auto (discovery ending mid-batch)
policies, an outcome join (outcome-only spans, a label signal), a rolling-reference member
beside fixed ones (a partly banked model), a non-banked detector (psi), values missing,
null, boolean or a string where a number is read, models evicted for newcomers, dropped and
coming back, ticks, and a restart mid-stream restoring every model's checkpoint.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from detectors.bank import BankMember
from monitor.config.policy import ModelPolicy
from monitor.engine.decode import ColumnarPath
from monitor.engine.engine import Engine
from monitor.engine.events import Event
from monitor.state.checkpoints import restore_model, snapshot_model
from tests.core.test_engine_banks import checkpoints, readings

SMALL = {"window": 30, "min_samples": 15, "stride": 5}


def policy(auto: bool) -> ModelPolicy:
    fixed = {"size": 50}
    spec: dict[str, Any] = {
        "health": {"for": "0s", "cooldown": "0s", "recover_after": "0s"},
        "outcomes": {"join": "on"},
        "signals": [
            {"name": "feats", "source": "features", "features": ["a", "b"],
             "detector": {"type": "ks_window", **SMALL, "reference": fixed}},
            {"name": "rolling", "source": "feature", "feature": "a",
             "detector": {"type": "ks_window", **SMALL,
                          "reference": {"size": 50, "mode": "rolling"}}},
            {"name": "lat", "source": "latency_ms",
             "detector": {"type": "quantile", "q": 0.9, **SMALL, "reference": fixed}},
            {"name": "err", "source": "error",
             "detector": {"type": "rate_window", **SMALL, "reference": fixed}},
            {"name": "err_abs", "source": "error", "thresholds": {"warn": 0.3},
             "detector": {"type": "rate_window", **SMALL}},
            {"name": "lerr", "source": "label_error", "thresholds": {"warn": 0.3},
             "detector": {"type": "rate_window", **SMALL}},
            {"name": "psi", "source": "feature", "feature": "c",
             "detector": {"type": "psi", "reference": fixed, **SMALL}},
        ],
    }  # fmt: skip
    if auto:
        spec["auto"] = {"enabled": True, "discover_events": 25}
    return ModelPolicy.model_validate(spec)


def stream(seed: int) -> list[list[Event]]:
    rng = random.Random(seed)
    out: list[list[Event]] = []
    pending: list[tuple[str, str]] = []
    rid = 0
    for b in range(rng.randint(30, 50)):
        batch = []
        for _ in range(rng.choice([1, 5, 30, 120])):
            model = f"m{rng.randrange(rng.choice([2, 6, 12]))}"
            if rng.random() < 0.15 and pending:
                owner, request = pending.pop(rng.randrange(len(pending)))
                batch.append(
                    Event(model=owner, request_id=request, label=float(rng.random() < 0.5))
                )
                continue
            drift = b > 20 and int(model[1:]) % 2 == 1
            features: dict[str, Any] = {
                "a": rng.gauss(2.0 if drift else 0.0, 1.0),
                "b": rng.gauss(0.0, 1.0),
                "c": rng.choice("xxw" if drift else "xyz"),
            }
            odd = rng.random()
            if odd < 0.05:
                del features["a"]
            elif odd < 0.08:
                features["b"] = None
            elif odd < 0.10:
                features["a"] = True
            elif odd < 0.12:
                features["a"] = "n/a"
            rid += 1
            pending.append((model, f"r{rid}"))
            batch.append(
                Event(
                    model=model,
                    request_id=f"r{rid}",
                    prediction=rng.random(),
                    features=features,
                    latency_ms=rng.lognormvariate(3 + drift, 0.3) if rng.random() > 0.03 else None,
                    error=rng.random() < (0.4 if drift else 0.05),
                )
            )
        out.append(batch)
    return out


def run(
    model_policy: ModelPolicy, batches: list[list[Event]], seed: int, *, hot: bool
) -> tuple[list[Any], int, int]:
    """Per batch: transitions and every Reading; the banked rows and columnar batches."""
    rng = random.Random(seed)

    def fresh() -> Engine:
        return Engine(
            lambda _m: model_policy, max_models=5, evict_idle_s=2.0, admit_after_events=1,
            banks=hot,
        )  # fmt: skip

    engine = fresh()
    path = ColumnarPath(engine, 1 << 20)
    trace: list[Any] = []
    now = 1_000.0
    columnar = banked = 0
    for batch in batches:
        now += rng.choice([0.5, 1.0, 3.0])
        decoded = path.decode([msgspec.json.encode(e) for e in batch]) if hot else None
        if decoded is None:
            found = engine.apply(batch, now)
            path.note([e.model for e in batch])
        else:
            columnar += 1
            found = [t for step in engine.apply_stepwise(decoded, now) for t in step]
        trace.append([(t.model, int(t.from_level), int(t.to_level), t.at) for t in found])
        trace.append(readings(engine))
        banked = max(banked, sum(
            m.detector.bank.banked(m.detector.number)
            for monitor in engine.models.values() for s in monitor.signals for m in s.members
            if isinstance(m.detector, BankMember)
        ))  # fmt: skip
        op = rng.random()
        if op < 0.15:
            trace.append([(t.model, int(t.to_level)) for t in engine.tick(now + 0.2)])
        elif op < 0.25 and engine.models:
            engine.drop(rng.choice(sorted(engine.models)))
        elif op < 0.32:
            trace.append(checkpoints(engine))
            data = {m: snapshot_model(mon, None, None) for m, mon in engine.models.items()}
            engine = fresh()
            path.engine = engine
            for model, blob in data.items():
                engine.adopt(model, restore_model(blob, model_policy, now, None))
    return trace, banked, columnar


@pytest.mark.parametrize("auto", [False, True], ids=["named", "auto"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_columns_into_banks_give_the_reference_paths_verdicts(seed: int, auto: bool) -> None:
    model_policy = policy(auto)
    batches = stream(seed)
    hot, banked, columnar = run(model_policy, batches, seed, hot=True)
    reference, _, _ = run(model_policy, batches, seed, hot=False)
    assert len(hot) == len(reference)
    for i, (got, want) in enumerate(zip(hot, reference, strict=True)):
        assert got == want, f"step {i} differs"
    # What is compared means something: rows banked, batches decoded into columns (fewer
    # with discovery: the batches of newcomers, which discover, take the event path).
    assert banked > 0 and columnar > (0 if auto else len(batches) // 2), (banked, columnar)


def test_the_comparison_sees_transitions() -> None:
    batches = stream(3)
    reference, _, _ = run(policy(False), batches, 3, hot=False)
    assert any(step and isinstance(step, list) and len(step[0]) == 4 for step in reference)
