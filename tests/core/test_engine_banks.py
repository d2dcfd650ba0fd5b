"""The engine with detector banks gives the verdicts of the per-object path, bit for bit.

The same batches go through ``Engine(banks=True)`` and ``Engine(banks=False)``: the bench's
steady-state policy, the auto policy (discovery ending inside a batch), a policy of outcomes
(outcome-only batches, sparse label signals); models coming and going (eviction at
``max_models``, ``drop``, a dropped model coming back); values missing now and then (a span
that cannot wait feeds a member twice in one batch); a checkpoint of every model mid-stream,
restored into a fresh engine of the other kind. After every batch every member's Reading,
``last_conclusive_at`` and the health transitions are compared, and at checkpoints every
model's checkpoint (detector bytes, waiting values, everything but the clock it was taken
at).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import yaml

from detectors.bank import BankMember
from monitor.config.policy import ModelPolicy
from monitor.engine.engine import Engine
from monitor.engine.events import Event
from monitor.state.checkpoints import restore_model, snapshot_model
from tests.core.reading_bits import reading_bits, same_nan

ROOT = Path(__file__).resolve().parents[2]
STEADY = ModelPolicy.model_validate(
    yaml.safe_load((ROOT / "bench" / "policy_steady.yaml").read_text())["models"]["default"]
)
#: The auto policy (bench/policy_auto.yaml), discovery ending inside a batch.
AUTO = ModelPolicy.model_validate(
    yaml.safe_load((ROOT / "bench" / "policy_auto.yaml").read_text())["models"]["default"]
)
OUTCOMES = ModelPolicy.model_validate(
    {
        "health": {"for": "2s"},
        "signals": [
            {
                "name": "error",
                "source": "error",
                "detector": {"type": "rate_window", "window": 200, "min_samples": 100},
                "thresholds": {"degraded": 0.05},
            },
            {
                "name": "latency",
                "source": "latency_ms",
                "detector": {
                    "type": "quantile",
                    "q": 0.9,
                    "window": 200,
                    "stride": 20,
                    "reference": {"size": 300},
                },
            },
            {"name": "label_error", "source": "label_error", "thresholds": {"degraded": 0.3}},
        ],
    }
)


def stream(
    n_models: int,
    batches: int,
    size: int,
    seed: int,
    outcomes: bool = False,
    late_from: float = 0.5,
    drifting: int = 0,
) -> list[list[Event]]:
    """Batches of events of ``n_models`` models (a window of them at a time: models come
    and go); a third of the models (``m % 3 == drifting``) drift from ``late_from`` of it on; a value is missing now and
    then. With ``outcomes``, each batch's predictions get their labels in the next batch,
    alone."""
    rng = np.random.default_rng(seed)
    out: list[list[Event]] = []
    held: list[Event] = []
    for b in range(batches):
        late = b >= batches * late_from
        # Models active in this batch: a sliding window over the ids.
        first = (b * n_models) // (2 * batches)
        active = np.arange(first, first + n_models // 2 + 1) % n_models
        models = rng.choice(active, size=size)
        # A value missing in some batches: the spans waiting go in on their own first.
        missing = int(rng.integers(size)) if rng.random() < 0.3 else -1
        batch: list[Event] = []
        for i, m in enumerate(models.tolist()):
            drift = late and m % 3 == drifting
            x = rng.normal(1.5 if drift else 0.0, 1.0, 10) + m * 0.1
            features: dict[str, Any] = {f"f{k}": float(x[k]) for k in range(10)}
            if i == missing:
                del features["f3"]
            rid = f"{b}-{i}"
            batch.append(
                Event(
                    model=f"m{m}",
                    features=features,
                    prediction=float(1.0 / (1.0 + math.exp(-x[0]))),
                    confidence=float(rng.uniform(0.5, 1.0)),
                    latency_ms=float(rng.lognormal(3.0, 0.4)) * (3.0 if drift else 1.0),
                    error=bool(rng.random() < (0.2 if drift else 0.01)),
                    request_id=rid if outcomes else None,
                )
            )
        if outcomes:
            out.append(batch)
            wrong = [bool(rng.random() < (0.5 if e.error else 0.05)) for e in batch]
            held = [
                Event(
                    model=e.model,
                    request_id=e.request_id,
                    label=float(1 - round(e.prediction or 0))
                    if w
                    else float(round(e.prediction or 0)),
                )
                for e, w in zip(batch, wrong, strict=True)
            ]
            out.append(held)
        else:
            out.append(batch)
    return out


def readings(engine: Engine) -> dict[str, Any]:
    return {
        model: [
            (signal.name, member.name, reading_bits(member.reading), member.last_conclusive_at)
            for signal in monitor.signals
            for member in signal.members
        ]
        for model, monitor in engine.models.items()
    }


def checkpoints(engine: Engine) -> dict[str, Any]:
    """Every model's checkpoint, without the clock it was taken at."""
    out = {}
    for model, monitor in engine.models.items():
        state = msgspec.msgpack.decode(snapshot_model(monitor, None, None))
        state.pop("saved_at")
        out[model] = same_nan(state)
    return out


def run(
    policy: ModelPolicy,
    batches: list[list[Event]],
    *,
    banks: bool,
    restore_into: bool,
    max_models: int = 12,
    step_s: float = 0.5,
) -> tuple[list[Any], list[Any], int]:
    """Apply ``batches``; returns per batch (transitions, readings), the checkpoints taken,
    and how many members the banks held at the end."""

    def fresh(with_banks: bool) -> Engine:
        return Engine(lambda _m: policy, max_models=max_models, evict_idle_s=3.0, banks=with_banks)

    engine = fresh(banks)
    trace: list[Any] = []
    saved: list[Any] = []
    now = 1_000.0
    for b, batch in enumerate(batches):
        now += step_s
        transitions = engine.apply(batch, now)
        trace.append([(t.model, int(t.from_level), int(t.to_level), t.at) for t in transitions])
        trace.append(readings(engine))
        if b % 7 == 3:
            tick = engine.tick(now + 0.1)
            trace.append([(t.model, int(t.to_level)) for t in tick])
        if b % 11 == 5 and engine.models:
            # A model dropped (its partition revoked, say); it comes back later, afresh.
            engine.drop(sorted(engine.models)[0])
        if b == len(batches) // 3 or b == (2 * len(batches)) // 3:
            saved.append(checkpoints(engine))
            # A restart: every model restored into an engine of the other kind or this one.
            data = {m: snapshot_model(mon, None, None) for m, mon in engine.models.items()}
            engine = fresh(not banks if restore_into else banks)
            for model, blob in data.items():
                assert engine.adopt(model, restore_model(blob, policy, now, None))
    saved.append(checkpoints(engine))
    held = 0
    for monitor in engine.models.values():
        for signal in monitor.signals:
            held += sum(isinstance(m.detector, BankMember) for m in signal.members)
    return trace, saved, held


#: Discovery with named signals: it ends inside a batch whose events the named ones got.
AUTO_NAMED = ModelPolicy.model_validate(
    {
        "auto": {"enabled": True, "discover_events": 1500},
        "health": {"for": "0s", "cooldown": "0s", "recover_after": "0s"},
        "signals": [
            {
                "name": "error",
                "source": "error",
                "detector": {
                    "type": "rate_window",
                    "window": 200,
                    "stride": 20,
                    "reference": {"size": 300},
                },
            },
            {
                "name": "latency_ms",
                "source": "latency_ms",
                "detector": {
                    "type": "quantile",
                    "q": 0.9,
                    "window": 200,
                    "stride": 20,
                    "reference": {"size": 300},
                },
            },
        ],
    }
)

#: Per case: the policy, its batches, the seconds between batches (the auto policy's health
#: holds a breach for 30 s).
CASES: dict[str, Callable[[], tuple[ModelPolicy, list[list[Event]], float]]] = {
    "steady": lambda: (STEADY, stream(16, 60, 600, seed=1), 2.0),
    # References of 10,000: few models, so that some reach their steady state.
    "auto": lambda: (AUTO, stream(4, 60, 900, seed=2, late_from=0.75, drifting=1), 20.0),
    "auto-named": lambda: (AUTO_NAMED, stream(6, 40, 300, seed=4, drifting=2), 0.5),
    "outcomes": lambda: (OUTCOMES, stream(10, 40, 400, seed=3, outcomes=True), 0.5),
}


@pytest.mark.parametrize("restore_into", [False, True], ids=["same-kind", "other-kind"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_banks_give_the_per_object_verdicts_and_checkpoints(case: str, restore_into: bool) -> None:
    policy, batches, step_s = CASES[case]()
    banked, banked_saved, held = run(
        policy, batches, banks=True, restore_into=restore_into, step_s=step_s
    )
    reference, reference_saved, none_held = run(
        policy, batches, banks=False, restore_into=restore_into, step_s=step_s
    )
    assert len(banked) == len(reference)
    for i, (got, want) in enumerate(zip(banked, reference, strict=True)):
        assert got == want, f"step {i} differs"
    assert banked_saved == reference_saved
    # The comparison means something: detectors were banked, verdicts were reached.
    if not restore_into:
        assert held > 0 and none_held == 0
    flat = repr(reference)
    assert "'drift'" in flat or "'anomaly'" in flat, "no breach: the comparison checks little"
    assert any(isinstance(step, list) and step and len(step[0]) == 4 for step in reference), (
        "no transition"
    )
