"""The latency bench's breach completion: the incident model's error sequence replayed through
the daemon's own detector and thresholds gives the exact event that completes each breach.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.throughput import (
    BENCH_POLICY,
    INCIDENT_MODEL,
    INCIDENT_POLICY,
    breach_completions,
)
from monitor.config.settings import load_settings


def test_breach_completes_at_the_first_test_whose_window_rate_exceeds_the_threshold(
    tmp_path: Path,
) -> None:
    data = yaml.safe_load(BENCH_POLICY.read_text())
    data["models"][INCIDENT_MODEL] = INCIDENT_POLICY
    config = tmp_path / "policy.yaml"
    config.write_text(yaml.safe_dump(data))
    settings = load_settings(config)
    # 150 good events, 200 errors, 400 good, 200 errors; produce time = event index.
    errors = [False] * 150 + [True] * 200 + [False] * 400 + [True] * 200
    incident = [(float(i), e) for i, e in enumerate(errors)]

    completions = breach_completions(incident, settings)

    # Tests every 10 events on the last <= 200: the 260th event is the first whose window
    # (events 61..260) holds more than half errors (110); the second surge starts at the
    # 751st event and the first test past half errors is at the 860th (110 of 200).
    assert completions[0] == 259.0
    assert len(completions) == 2
    assert completions[1] == 859.0
