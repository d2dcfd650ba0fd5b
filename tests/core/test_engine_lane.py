"""The bank lane (``monitor.engine.lane``) gives the verdicts and checkpoints of both other paths.

Seeded random streams go through three engines side by side: per object
(``Engine(banks=False)``), the banks fed member by member (``lane=False``) and the banks with
the lane (the default). Many models under mixed policies: the default one (a numeric feature
family, the prediction, latency and error: all banked, and a ``psi`` signal over a category,
per object), an override for some models (other windows, so other banks, and no ``psi``: a
second plan shape sharing nothing), and one with a ``no_data`` rule (never in the lane).
Values go missing now and then, models come and go (evictions at ``max_models``, ``drop``),
some are restored mid-way from their checkpoint (one at a time, and all at once into fresh
engines), the clock ticks. After every batch and tick: the same transitions, every member's
Reading bit for bit, its ``last_conclusive_at``, and every model's checkpoint byte for byte.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml

from detectors.bank import BankMember, MissingRateBank
from monitor.config.policy import ModelPolicy, SignalSource
from monitor.engine.engine import Engine
from monitor.engine.events import Event
from monitor.state import checkpoints
from monitor.state.checkpoints import restore_model, snapshot_model
from tests.core.reading_bits import reading_bits

ROOT = Path(__file__).resolve().parents[2]
FEATURES = [f"f{k}" for k in range(4)]


def _ks(window: int, stride: int, reference: int) -> dict[str, Any]:
    return {
        "type": "ks_window",
        "window": window,
        "min_samples": window // 2,
        "stride": stride,
        "reference": {"size": reference},
    }


DEFAULT = ModelPolicy.model_validate(
    {
        "health": {"for": "1s", "cooldown": "0s", "recover_after": "2s"},
        "signals": [
            {
                "name": "features",
                "source": "features",
                "features": FEATURES,
                "level": "warn",
                "detector": _ks(200, 20, 300),
            },
            {"name": "prediction", "source": "prediction", "detector": _ks(200, 20, 300)},
            {
                "name": "latency_ms",
                "source": "latency_ms",
                "level": "degraded",
                "detector": {
                    "type": "quantile",
                    "q": 0.9,
                    "window": 200,
                    "min_samples": 100,
                    "stride": 20,
                    "reference": {"size": 300},
                },
            },
            {
                "name": "error",
                "source": "error",
                "level": "degraded",
                "detector": {
                    "type": "rate_window",
                    "window": 200,
                    "min_samples": 100,
                    "stride": 20,
                    "reference": {"size": 300},
                },
            },
            {
                "name": "region",
                "source": "feature",
                "feature": "region",
                "detector": {
                    "type": "psi",
                    "window": 200,
                    "min_samples": 100,
                    "stride": 20,
                    "reference": {"size": 300},
                },
            },
        ],
    }
)
#: The override of some models: other windows and strides (other banks), no category.
OVERRIDE = ModelPolicy.model_validate(
    {
        "health": {"for": "0s", "cooldown": "0s", "recover_after": "1s"},
        "signals": [
            {
                "name": "features",
                "source": "features",
                "features": FEATURES[:2],
                "detector": _ks(150, 15, 200),
            },
            {
                "name": "error",
                "source": "error",
                "level": "critical",
                "detector": {
                    "type": "rate_window",
                    "window": 150,
                    "min_samples": 75,
                    "stride": 15,
                    "reference": {"size": 200},
                },
            },
        ],
    }
)
#: A ``no_data`` rule: the no-data clock reads every call's Reading, the lane is not taken.
NO_DATA = ModelPolicy.model_validate(
    {
        "signals": [
            {
                "name": "latency_ms",
                "source": "latency_ms",
                "no_data": "warn",
                "no_data_after": "3s",
                "detector": {
                    "type": "quantile",
                    "q": 0.9,
                    "window": 200,
                    "min_samples": 100,
                    "stride": 20,
                    "reference": {"size": 300},
                },
            },
        ],
    }
)


def policy_for(model: str) -> ModelPolicy:
    number = int(model[1:])
    if number % 5 == 1:
        return OVERRIDE
    if number == 7:
        return NO_DATA
    return DEFAULT


def stream(seed: int, n_models: int, batches: int) -> list[list[Event]]:
    """Batches of skewed size and mix (some models get a few events, some several strides'
    worth); a third of the models drift in spells after the first third; values missing
    now and then."""
    rng = np.random.default_rng(seed)
    weights = rng.pareto(2.0, n_models) + 0.2
    out = []
    for b in range(batches):
        # A sliding window of models is active: models come and go.
        first = (b * n_models) // (2 * batches)
        active = np.arange(first, first + (2 * n_models) // 3) % n_models
        p = weights[active] / weights[active].sum()
        size = int(rng.integers(50, 1500))
        models = rng.choice(active, size=size, p=p)
        # Drift comes and goes (breaches, then recoveries), from the third batch of ten on.
        late = b >= batches // 3 and (b // 10) % 2 == 1
        gaps = rng.random(size) < (0.02 if rng.random() < 0.4 else 0.0)
        batch = []
        for i, m in enumerate(models.tolist()):
            drift = late and m % 3 == 0
            x = rng.normal(1.0 if drift else 0.0, 1.0, len(FEATURES)) + m * 0.05
            features: dict[str, Any] = {f: float(v) for f, v in zip(FEATURES, x, strict=True)}
            features["region"] = str(
                rng.choice(["eu", "us", "ap"], p=[0.2, 0.3, 0.5] if drift else [0.5, 0.3, 0.2])
            )
            latency: float | None = float(rng.lognormal(3.0, 0.4)) * (2.5 if drift else 1.0)
            if gaps[i]:
                # One value missing: a feature, the latency or the category.
                which = int(rng.integers(3))
                if which == 0:
                    del features["f2"]
                elif which == 1:
                    latency = None
                else:
                    del features["region"]
            batch.append(
                Event(
                    model=f"m{m}",
                    features=features,
                    prediction=float(1.0 / (1.0 + math.exp(-x[0]))),
                    confidence=float(rng.uniform(0.5, 1.0)),
                    latency_ms=latency,
                    error=bool(rng.random() < (0.25 if drift else 0.01)),
                )
            )
        out.append(batch)
    return out


def observed(engine: Engine) -> dict[str, Any]:
    """Every member's Reading and ``last_conclusive_at``, every model's checkpoint bytes."""
    return {
        model: (
            [
                (member.name, reading_bits(member.reading), member.last_conclusive_at)
                for signal in monitor.signals
                for member in signal.members
            ],
            snapshot_model(monitor, None, None),
        )
        for model, monitor in sorted(engine.models.items())
    }


KINDS = {"per-object": {"banks": False}, "member": {"lane": False}, "lane": {}}


def fresh(kind: str) -> Engine:
    return Engine(policy_for, max_models=14, evict_idle_s=4.0, **KINDS[kind])


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_lane_gives_the_other_paths_verdicts_and_checkpoints(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checkpoints carry the wall clock they were taken at: held still, they compare as bytes.
    monkeypatch.setattr(checkpoints, "time", SimpleNamespace(time=lambda: 0.0))
    batches = stream(seed, n_models=24, batches=70)
    engines = {kind: fresh(kind) for kind in KINDS}
    rng = np.random.default_rng(seed + 100)
    now = 1_000.0
    transitions = evicted = 0
    lane_events = member_events = 0
    for b, batch in enumerate(batches):
        now += 0.5
        got = {
            kind: [(t.model, int(t.from_level), int(t.to_level), t.at) for t in e.apply(batch, now)]
            for kind, e in engines.items()
        }
        assert got["lane"] == got["member"] == got["per-object"], f"batch {b}: transitions"
        transitions += len(got["lane"])
        taken = {kind: e.take_evicted() for kind, e in engines.items()}
        assert taken["lane"] == taken["member"] == taken["per-object"], f"batch {b}: evictions"
        evicted += len(taken["lane"])
        if rng.random() < 0.4:
            ticked = {
                kind: [(t.model, int(t.to_level)) for t in e.tick(now + 0.25)]
                for kind, e in engines.items()
            }
            assert ticked["lane"] == ticked["member"] == ticked["per-object"], f"tick {b}"
            transitions += len(ticked["lane"])
        seen = {kind: observed(e) for kind, e in engines.items()}
        assert seen["lane"] == seen["member"], f"batch {b}: lane and member by member differ"
        assert seen["lane"] == seen["per-object"], f"batch {b}: lane and per object differ"
        models = sorted(engines["lane"].models)
        if models and rng.random() < 0.04:
            # A model dropped (its partition revoked); it may come back later, afresh.
            gone = models[int(rng.integers(len(models)))]
            for e in engines.values():
                e.drop(gone)
        elif models and rng.random() < 0.15:
            # One model restored in place from its checkpoint (a rebalance gave it back).
            back = models[int(rng.integers(len(models)))]
            for e in engines.values():
                blob = snapshot_model(e.models[back], None, None)
                assert e.adopt(back, restore_model(blob, policy_for(back), now, None))
        if b in (25, 50):
            # A restart: every model restored into a fresh engine of its kind.
            for kind, e in list(engines.items()):
                blobs = {m: snapshot_model(mon, None, None) for m, mon in e.models.items()}
                if kind == "lane" and e.banks is not None:
                    lane_events += e.banks.lane_events
                    member_events += e.banks.member_events
                engines[kind] = e = fresh(kind)
                for model, blob in blobs.items():
                    assert e.adopt(model, restore_model(blob, policy_for(model), now, None))
    lane = engines["lane"].banks
    member = engines["member"].banks
    assert lane is not None and member is not None
    lane_events += lane.lane_events
    member_events += lane.member_events
    assert member.lane_events == 0, "the member-by-member engine took the lane"
    # The comparison means something: the lane took most of what was fed, transitions and
    # breaches happened, models were evicted.
    assert lane_events > 0.6 * (lane_events + member_events), (lane_events, member_events)
    assert transitions > 5, transitions
    assert evicted > 0, "no model evicted"


def test_a_missing_value_costs_only_its_own_model_the_lane_and_the_wait() -> None:
    """Completeness is a span's, not its batch's: with one event of m0 missing a feature in
    every batch, the other models' spans still wait for their stride and go through the
    lane (checked per batch, as before, a missing value anywhere sent every model of the
    batch member by member and fed at once)."""
    engine = Engine(policy_for, max_models=100)
    models = ["m0", "m2", "m3", "m4", "m5", "m6", "m8", "m9"]  # the default policy's
    rng = np.random.default_rng(3)

    def event(model: str, hole: bool = False) -> Event:
        x = rng.normal(size=len(FEATURES))
        features: dict[str, Any] = {f: float(v) for f, v in zip(FEATURES, x, strict=True)}
        features["region"] = "eu"
        if hole:
            del features["f2"]
        return Event(model=model, features=features, prediction=0.5, latency_ms=10.0)

    now = 1_000.0
    for _ in range(120):  # references and windows fill: 600 events a model
        now += 0.5
        engine.apply([event(m) for m in models for _ in range(5)], now)
    banks = engine.banks
    assert banks is not None
    before_lane, before_member = banks.lane_events, banks.member_events
    waited = 0
    for _ in range(40):
        now += 0.5
        batch = [event(m) for m in models for _ in range(5)] + [event("m0", hole=True)]
        engine.apply(batch, now)
        waited += sum(bool(engine.models[m].deferred) for m in models[1:])
    lane = banks.lane_events - before_lane
    member = banks.member_events - before_member
    # m0 goes member by member (its spans miss a value); the 7 others wait and take the lane.
    assert waited > 7 * 40 // 2, waited
    assert lane >= 7 * 5 * 40 * 0.9, (lane, member)


#: The auto policy (bench/policy_auto.yaml, the default users run): a ``missing_rate``
#: member per watched feature, the largest group of a model's detectors.
AUTO = ModelPolicy.model_validate(
    yaml.safe_load((ROOT / "bench" / "policy_auto.yaml").read_text())["models"]["default"]
)


def auto_stream(seed: int, n_models: int, batches: int, size: int) -> list[list[Event]]:
    """Events of ``n_models`` models with 6 numeric features and a category; from 80% of the
    stream on, model m1's feature ``x2`` goes missing in 40% of its events (its missing
    rate drifts) and m2's latency rises."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(batches):
        late = b >= batches * 0.8
        batch = []
        for m in rng.integers(n_models, size=size).tolist():
            x = rng.normal(size=6)
            features: dict[str, Any] = {f"x{k}": float(x[k]) for k in range(6)}
            features["region"] = str(rng.choice(["eu", "us", "ap"]))
            if late and m == 1 and rng.random() < 0.4:
                del features["x2"]
            batch.append(
                Event(
                    model=f"m{m}",
                    features=features,
                    prediction=float(1.0 / (1.0 + math.exp(-x[0]))),
                    confidence=float(rng.uniform(0.5, 1.0)),
                    latency_ms=float(rng.lognormal(3.0, 0.4)) * (3.0 if late and m == 2 else 1.0),
                    error=bool(rng.random() < 0.01),
                )
            )
        out.append(batch)
    return out


def test_the_lane_takes_the_auto_policys_missing_rate_members_with_the_same_verdicts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under the auto policy the ``missing_rate`` members (one per watched feature) are
    bank members fed by the lane, like the other banked detectors, not per object beside
    it (``LanePlan.others``); their Readings, every other member's, the transitions and the
    checkpoints are the per-object engine's, batch after batch, through the missing rate's
    drift (whose spans miss a value, hence go member by member into the same bank)."""
    monkeypatch.setattr(checkpoints, "time", SimpleNamespace(time=lambda: 0.0))
    # References of 10,000 (the calibrated default): 3 models of ~14,000 events each.
    batches = auto_stream(5, n_models=3, batches=56, size=750)
    engines = {
        kind: Engine(lambda _m: AUTO, max_models=8, **KINDS[kind])
        for kind in ("per-object", "lane")
    }
    now = 1_000.0
    missing_verdicts: set[str] = set()
    transitions = 0
    fed_before_steady = (0, 0)
    for b, batch in enumerate(batches):
        now += 20.0  # the auto policy's health holds a breach for 30 s
        got = {
            kind: [(t.model, int(t.from_level), int(t.to_level), t.at) for t in e.apply(batch, now)]
            for kind, e in engines.items()
        }
        assert got["lane"] == got["per-object"], f"batch {b}: transitions"
        transitions += len(got["lane"])
        seen = {kind: observed(e) for kind, e in engines.items()}
        for model, (lane_members, lane_blob) in seen["lane"].items():
            members, blob = seen["per-object"][model]
            assert lane_members == members, f"batch {b}, {model}: Readings"
            if b % 8 == 7 or b == len(batches) - 1:
                assert lane_blob == blob, f"batch {b}, {model}: checkpoint"
        missing_verdicts |= {
            bits[0]
            for members, _blob in seen["lane"].values()
            for name, bits, _at in members
            if name.startswith("missing.")
        }
        banks = engines["lane"].banks
        assert banks is not None
        if b == 20:  # every reference and window full by now (about 5,000 events a model)
            fed_before_steady = (banks.lane_events, banks.member_events)
    banks = engines["lane"].banks
    assert banks is not None
    held = 0
    for model, monitor in engines["lane"].models.items():
        missing = [
            member
            for signal in monitor.signals
            if signal.policy.source is SignalSource.MISSING
            for member in signal.members
        ]
        assert len(missing) == 7, (model, [m.name for m in missing])  # x0..x5 and region
        plan = monitor.lane_plan()
        assert plan is not None
        assert not set(map(id, missing)) & set(map(id, plan.others)), f"{model}: per object"
        in_parts = {id(m) for part in plan.parts for m in part.members}
        assert set(map(id, missing)) <= in_parts, f"{model}: missing members not in the lane"
        for member in missing:
            detector = member.detector
            assert isinstance(detector, BankMember) and isinstance(detector.bank, MissingRateBank)
            held += detector.bank.banked(detector.number)
    assert held == 7 * 3, "not every missing_rate member reached the bank's rows"
    # In steady state the lane fed most events (m1's spans with a missing value did not).
    lane_events = banks.lane_events - fed_before_steady[0]
    member_events = banks.member_events - fed_before_steady[1]
    assert lane_events > 0.75 * (lane_events + member_events), (lane_events, member_events)
    # The comparison covered a missing-rate drift, not only steady zeros.
    assert {"ok", "drift"} <= missing_verdicts, missing_verdicts
    assert transitions > 0, "no transition"
