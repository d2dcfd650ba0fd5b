"""Replay of a policy that names no signal: the summary says per model what was watched and
why (discovered, named, overridden, with reasons), the HTML report has a section for it, and
the error surge the discovered error signal watches is found (before auto coverage such a
policy replayed to no transition at all)."""

from __future__ import annotations

import json
import random
from html import escape as html_escape
from pathlib import Path
from typing import Any

from monitor.config.settings import load_settings
from monitor.tools.replay import Replay
from monitor.tools.report import render_report

T0 = 1_700_000_000.0
STEP_S = 0.005
SURGE_AT = 16_000
N = 24_000


def events(model: str = "checkout", seed: int = 2) -> list[bytes]:
    """Error 1%, then 6% from event ``SURGE_AT``; a numeric and a categorical feature."""
    rng = random.Random(seed)
    out = []
    for i in range(N):
        body: dict[str, Any] = {
            "model": model,
            "ts": T0 + i * STEP_S,
            "features": {"amount": rng.gauss(50, 10), "channel": rng.choice(["web", "app"])},
            "latency_ms": 20.0 + rng.random(),
            "error": rng.random() < (0.06 if i >= SURGE_AT else 0.01),
        }
        # A feature seen once: too rare to watch, yet no schema change later.
        if i == 3:
            body["features"]["debug_trace"] = "x"
        out.append(json.dumps(body).encode())
    return out


def settings_of(tmp_path: Path, policy: dict[str, Any]) -> Any:
    path = tmp_path / "policy.yaml"
    path.write_text(json.dumps({"models": policy}))
    return load_settings(path)


def test_minimal_policy_replays_the_error_surge_and_says_what_it_watched(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, {"default": {"mode": "enforce"}})
    result = Replay(settings).run(iter(events()), source="surge.jsonl")
    summary = result.summary()
    model = summary["models"]["checkout"]
    ups = [t for t in model["transitions"] if t["to"] == "degraded"]
    assert ups, model["transitions"]
    assert "error" in ups[0]["signals"]
    # Caught within 2,000 events of the change, the default `for` (30 s) included.
    line = ups[0]["index"]
    assert SURGE_AT <= line <= SURGE_AT + 2_000 + 30 / STEP_S
    coverage = model["coverage"]
    assert coverage["state"] == "watching" and coverage["events_observed"] == 200
    assert coverage["rare"] == ["debug_trace"] and coverage["rare_count"] == 1
    shown = {c["name"]: c for c in coverage["signals"]}
    assert list(shown) == ["features", "categories", "missing", "schema", "latency_ms", "error"]
    assert {c["origin"] for c in shown.values()} == {"discovered"}
    assert shown["features"]["features"] == ["amount"]
    assert shown["categories"]["features"] == ["channel"]
    assert shown["error"]["level"] == "degraded"
    assert shown["error"]["reason"].startswith("error rate")
    # Per-signal counts cover the discovered signals too.
    assert model["signals"]["error"]["transitions"] >= 1
    assert set(model["signals"]) == set(shown)
    # The report's section, with each signal's reason.
    html = render_report(result)
    assert "What was watched and why" in html
    assert "debug_trace" in html
    for covered in shown.values():
        assert html_escape(covered["reason"]) in html
    # The series of the signals built after discovery are plotted (no value before it).
    series = result.series["checkout"]
    assert set(series.signals) == set(shown)
    assert all(len(values) == len(series.times) for values in series.values)


def test_named_and_overridden_signals_say_so_and_ignored_ones_are_listed(
    tmp_path: Path,
) -> None:
    policy = {
        "default": {
            "auto": {"enabled": True, "ignore": ["feature.channel", "latency_ms"]},
            "signals": [
                {"name": "error", "source": "error", "thresholds": {"critical": 0.5}},
                {"name": "slow", "source": "latency_ms", "thresholds": {"warn": 1000}},
            ],
        }
    }
    result = Replay(settings_of(tmp_path, policy)).run(iter(events()[:3_000]))
    coverage = result.summary()["models"]["checkout"]["coverage"]
    origins = {c["name"]: (c["origin"], c["reason"]) for c in coverage["signals"]}
    assert list(origins) == ["features", "missing", "schema", "error", "slow"]
    assert origins["error"][0] == "overridden"
    assert origins["error"][1].startswith("named in the policy, over: error rate")
    assert origins["slow"] == ("named", "named in the policy")
    assert coverage["ignored_features"] == ["channel"]
    assert coverage["ignored_signals"] == ["latency_ms"]
    html = render_report(result)
    assert "ignored features (auto.ignore)" in html and "overridden" in html


def test_named_signals_only_replay_as_before(tmp_path: Path) -> None:
    policy = {"default": {"signals": [{"name": "error", "source": "error"}]}}
    result = Replay(settings_of(tmp_path, policy)).run(iter(events()[:3_000]))
    model = result.summary()["models"]["checkout"]
    assert model["coverage"] == {
        "discovers": False,
        "state": "watching",
        "signals": [
            {
                "name": "error",
                "origin": "named",
                "reason": "named in the policy",
                "source": "error",
                "detector": "rate_window",
                "level": "warn",
                "features": None,
            }
        ],
    }
    assert list(model["signals"]) == ["error"]
    assert "What was watched and why" not in render_report(result)
