"""Checkpoints written before events were held back in the engine alone (the layout commit,
8e1cc09) still restore, and the restored models continue exactly as the old code did.

``data/checkpoints_8e1cc09.msgpack`` was written by that commit's code from the stream below:
model checkpoints taken half way (some models had events waiting), and each model's
detector states and health after the rest of the stream. The spec dumps fix every spec's
JSON (field order included): a checkpoint's spec digest is a hash of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from detectors import parse_spec
from monitor.config.policy import ModelPolicy
from monitor.engine.engine import Engine, ModelMonitor
from monitor.engine.events import Event
from monitor.state.checkpoints import restore_model

FIXTURE = Path(__file__).parent / "data" / "checkpoints_8e1cc09.msgpack"
SMALL = {"window": 200, "stride": 50, "reference": {"size": 300}}
POLICY = ModelPolicy.model_validate(
    {
        "mode": "enforce",
        "health": {"for": "0s", "cooldown": "0s", "recover_after": "0s"},
        "signals": [
            {
                "name": "features",
                "source": "features",
                "features": ["f0", "f1"],
                "detector": {"type": "ks_window", **SMALL},
            },
            {"name": "prediction", "source": "prediction", "detector": {"type": "adwin", **SMALL}},
            {
                "name": "category",
                "source": "feature",
                "feature": "c0",
                "detector": {"type": "psi", **SMALL},
            },
            {
                "name": "latency",
                "source": "latency_ms",
                "detector": {"type": "quantile", **SMALL, "threshold": 80.0},
            },
            {
                "name": "errors",
                "source": "error",
                "detector": {"type": "rate_window", **SMALL, "stride": 20},
            },
        ],
    }
)


def batches() -> Iterator[list[Event]]:
    """Five models, 120 batches; model m0 drifts in the second half."""
    rng = np.random.default_rng(31)
    for batch in range(120):
        size = int(rng.choice([15, 60, 240]))
        drifting = batch >= 70
        out = []
        for _ in range(size):
            m = int(rng.integers(5))
            shift = 2.0 if drifting and m == 0 else 0.0
            x = rng.normal(shift, 1.0, 2)
            out.append(
                Event(
                    model=f"m{m}",
                    features={
                        "f0": float(x[0]),
                        "f1": float(x[1]),
                        "c0": str(rng.choice(["a", "b", "c"] if not shift else ["c", "d"])),
                    },
                    prediction=float(x[0]),
                    latency_ms=float(rng.lognormal(3.0, 0.3)) * (3.0 if shift else 1.0),
                    error=bool(rng.random() < (0.5 if shift else 0.02)),
                )
            )
        yield out


def _fixture() -> dict[str, Any]:
    found: dict[str, Any] = msgspec.msgpack.decode(FIXTURE.read_bytes())
    return found


def test_checkpoints_of_the_previous_layout_restore_and_continue_identically() -> None:
    fixture = _fixture()
    stream = list(batches())
    half = len(stream) // 2
    now = 0.25 * half
    engine = Engine(lambda model: POLICY, max_models=100)
    for name, data in fixture["checkpoints"].items():
        assert engine.adopt(name, restore_model(data, POLICY, now, None))
    for events in stream[half:]:
        now += 0.25
        engine.apply(events, now)
    assert sorted(engine.models) == sorted(fixture["expected"])
    drifted = False
    for name, monitor in engine.models.items():
        want = fixture["expected"][name]
        monitor.flush(now)
        assert int(monitor.health.level) == want["level"], name
        drifted |= want["level"] > 0
        assert _detector_states(monitor) == want["detectors"], name
    assert drifted, "no model left OK: the continuation checks no verdict"


def _detector_states(monitor: ModelMonitor) -> dict[str, bytes]:
    return {m.name: m.detector.to_bytes() for s in monitor.signals for m in s.members}


def test_every_spec_dumps_as_before() -> None:
    # The digest a checkpoint stores for its spec is a hash of this JSON: a changed field
    # order or default would make every detector of an old checkpoint start afresh.
    for kind, dumped in _fixture()["spec_dumps"].items():
        assert parse_spec({"type": kind}).model_dump_json() == dumped, kind
