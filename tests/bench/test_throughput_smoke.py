"""Smoke run of the throughput bench on a few thousand events, so the harness never rots.

No timing is asserted (the machine is shared); counts, ratios and the report's shape are.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.throughput import BenchConfig, measure_latency, run_bench
from monitor.tools.embedded_broker import EmbeddedBroker
from tests.conftest import require_tansu

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
async def test_throughput_harness_runs_all_three_contenders_and_writes_the_table(
    tmp_path: Path,
) -> None:
    require_tansu()
    out = tmp_path / "throughput.md"
    cfg = BenchConfig(events=5000, models=50, out=out, label="smoke")

    result = await run_bench(cfg)

    runs = result["runs"]
    for kind in ("bare", "daemon", "peer"):
        assert [r.events for r in runs[kind]] == [5000], kind
        assert runs[kind][0].rate > 0
    assert runs["daemon"][0].extra["models"] == 50
    assert runs["daemon"][0].extra["detectors"] == 50 * 16
    summary = result["summary"]
    assert summary["b/a"] == pytest.approx(summary["daemon"] / summary["bare"])
    assert summary["b/c"] == pytest.approx(summary["daemon"] / summary["peer"])
    text = out.read_text()
    assert "| (b) driftwarden end to end |" in text
    assert "| (b)/(a) |" in text and "| (b)/(c) |" in text


@pytest.mark.timeout(180)
async def test_latency_harness_measures_each_surge_after_the_warmup(
    broker: EmbeddedBroker, unique: str
) -> None:
    # Daemon and producer in their own processes, as in the full run, at a rate the shared
    # CI machine sustains. Surges start after the warm-up; each must be found and flipped.
    cfg = BenchConfig(
        models=50,
        latency=True,
        latency_rate=10_000,
        latency_seconds=10.0,
        latency_period=3.0,
        latency_surge=1.0,
        latency_warmup=2.0,
        out=None,
    )
    result = await measure_latency(broker.bootstrap_servers, cfg, unique)
    assert result["incidents"] >= 2
    assert result["flag_writes"] >= result["incidents"] - result["missed"] >= 1
    found = [x for x in result["latencies_s"] if x == x]  # NaN: no write before the next
    assert len(found) == result["incidents"] - result["missed"]
    assert all(x >= 0 for x in found)
