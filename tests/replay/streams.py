"""Scripted event streams and policies for the replay tests, with a reference model of the
expected transitions computed independently of the engine."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from monitor.tools.traffic import event_stream

T0 = 1_700_000_000.0
STEP = 0.01
INCIDENT = (5000, 8000)
WINDOW = 1000
MIN_SAMPLES = 200
LIMIT = 0.05
FOR_S = 2.0
RECOVER_S = 5.0

POLICY = f"""
models:
  default:
    mode: enforce
    health: {{for: {FOR_S}s, cooldown: 0, recover_after: {RECOVER_S}s}}
    signals:
      - name: error_rate
        source: error
        detector: {{type: rate_window, window: {WINDOW}, min_samples: {MIN_SAMPLES}, stride: 1,
                    persist: 0, threshold: {LIMIT}}}
        thresholds: {{degraded: {LIMIT}}}
      - name: latency_p99
        source: latency_ms
        detector: {{type: quantile, q: 0.99, window: 2000, min_samples: 200}}
        thresholds: {{warn: 500, critical: 5000}}
    actions:
      warn:
        alert: {{severity: warning}}
      degraded:
        flags: {{variant: rules}}
        alert: {{severity: page}}
      critical:
        flags: {{enabled: false}}
        alert: {{severity: critical}}
"""


def is_error(i: int) -> bool:
    """1% errors, 30% between lines INCIDENT[0] and INCIDENT[1]."""
    if INCIDENT[0] <= i < INCIDENT[1]:
        return i % 10 < 3
    return i % 100 == 0


def scripted_event(model: str, i: int, kinds: frozenset[str], rng: random.Random) -> dict[str, Any]:
    """The ``i``-th event: its error from ``is_error`` (no randomness, so the reference model
    below can follow it), a latency cycling over 13 values."""
    return {
        "model": model,
        "error": is_error(i),
        "latency_ms": 20.0 + i % 13,
        "request_id": f"{model}-{i}",
    }


def lines(n: int, model: str = "fraud") -> Iterator[str]:
    """The stream as JSON lines, events ``STEP`` seconds apart from ``T0`` (the shared
    generator's offline mode)."""
    for event in event_stream(n, scripted_event, models=(model,), t0=T0, step_s=STEP):
        yield json.dumps(event)


def write_stream(path: Path, n: int) -> Path:
    path.write_text("".join(line + "\n" for line in lines(n)), encoding="utf-8")
    return path


def write_policy(path: Path) -> Path:
    path.write_text(POLICY, encoding="utf-8")
    return path


def expected_transitions(n: int) -> list[tuple[int, str, str]]:
    """(line, from, to) of the error-rate incident, from a direct simulation of the window
    rate and of `for` / `recover_after` on event time."""
    errors = [is_error(i) for i in range(n)]
    out: list[tuple[int, str, str]] = []
    state = "ok"
    breach_since: float | None = None
    healthy_since: float | None = None
    ones = 0
    for i in range(n):
        ones += errors[i]
        if i >= WINDOW:
            ones -= errors[i - WINDOW]
        count = min(i + 1, WINDOW)
        breached = count >= MIN_SAMPLES and ones / count > LIMIT
        t = T0 + i * STEP
        if breached:
            breach_since = t if breach_since is None else breach_since
            healthy_since = None
            if state == "ok" and t - breach_since >= FOR_S:
                out.append((i, "ok", "degraded"))
                state = "degraded"
        else:
            breach_since = None
            if state != "ok":
                healthy_since = t if healthy_since is None else healthy_since
                if t - healthy_since >= RECOVER_S:
                    out.append((i, "degraded", "ok"))
                    state, healthy_since = "ok", None
    return out
