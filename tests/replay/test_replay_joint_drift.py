"""A policy's `anomaly` signal with `joint_drift` sees, through the whole engine (replay), a
correlation flip that leaves every feature's marginal unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from monitor.config.settings import load_settings
from monitor.tools.replay import replay_file

POLICY = """
models:
  default:
    mode: shadow
    health: {for: 0s, cooldown: 1m, recover_after: 2m}
    signals:
      - name: joint
        source: anomaly
        features: [a, b, c, d, e]
        detector: {type: joint_drift}
        level: degraded
"""

CHANGE_AT = 15_000


def _events(path: Path) -> Path:
    rng = np.random.default_rng(1)

    def rows(n: int, rho: float) -> np.ndarray:
        x = rng.normal(size=(n, 5))
        x[:, 1] = rho * x[:, 0] + math.sqrt(1.0 - rho * rho) * x[:, 1]
        return x

    table = np.concatenate([rows(CHANGE_AT, 0.9), rows(5_000, -0.9)])
    with path.open("w") as fh:
        for i, row in enumerate(table):
            features = dict(zip("abcde", row.tolist(), strict=True))
            fh.write(json.dumps({"model": "m", "ts": 1.7e9 + i * 0.1, "features": features}))
            fh.write("\n")
    return path


def test_joint_drift_signal_degrades_the_model_after_the_flip_and_not_before(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    result = replay_file(_events(tmp_path / "events.jsonl"), load_settings(policy))
    transitions = result.summary()["models"]["m"]["transitions"]
    assert [(t["from"], t["to"]) for t in transitions] == [("ok", "degraded")]
    assert transitions[0]["signals"] == ["joint"]
    assert CHANGE_AT < transitions[0]["index"] <= CHANGE_AT + 3_000
