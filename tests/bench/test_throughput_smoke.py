"""Smoke run of the throughput bench on a few thousand events, so the harness never rots.

No timing is asserted (the machine is shared); counts, phases, ratios and the report's shape
are.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.throughput import (
    BEFORE_HEADING,
    STEADY_END,
    STEADY_POLICY,
    BenchConfig,
    measure_latency,
    render_latency,
    run_bench,
)
from monitor.tools.embedded_broker import EmbeddedBroker
from tests.conftest import require_tansu

pytestmark = pytest.mark.integration


def small_steady_policy(tmp_path: Path) -> Path:
    """The steady policy with references and windows small enough to fill in a smoke run
    (every model tests after 50 + 50 of its events), read in batches of at most 300 so that
    a few thousand events make fill and steady batches."""
    data = yaml.safe_load(STEADY_POLICY.read_text())
    data["kafka"] = {"max_poll_records": 300}
    for signal in data["models"]["default"]["signals"]:
        signal["detector"].update(
            reference={"size": 50}, window=50, min_samples=20, stride=10, persist=0
        )
    path = tmp_path / "policy_small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.timeout(300)
async def test_throughput_harness_measures_fill_and_steady_state_of_each_contender(
    tmp_path: Path,
) -> None:
    require_tansu()
    out = tmp_path / "throughput.md"
    out.write_text(f"# Throughput\n\nold run\n\n{BEFORE_HEADING}\n\nthe baseline table\n")
    cfg = BenchConfig(
        models=(10, 20),
        events=(6000,),
        repeats=1,
        policy=small_steady_policy(tmp_path),
        two_process=True,
        out=out,
        label="smoke",
    )

    result = await run_bench(cfg)

    assert [s["stream"].models for s in result["sets"]] == [10, 20]
    for entry in result["sets"]:
        stream, runs, summary = entry["stream"], entry["runs"], entry["summary"]
        assert stream.total == 6000 and stream.need == 100
        fill_total = stream.fill_total
        assert fill_total is not None and 10 * 100 <= fill_total < stream.steady_end
        for kind in ("bare", "daemon", "peer"):
            (run,) = runs[kind]
            assert run.events == 6000, kind
            assert run.fill is not None and run.steady is not None, kind
            # Steady batches come after every model of their partitions filled, end by 95%.
            assert run.steady.events > 0 and run.steady.end <= stream.steady_end, kind
            assert run.fill.events + run.steady.events <= 6000, kind
            assert run.steady.rate > 0 and run.fill.rate > 0, kind
        daemon = runs["daemon"][0]
        assert daemon.extra["models"] == stream.models
        assert daemon.extra["detectors"] == stream.models * 14
        assert daemon.extra["applied_events"] == 6000
        assert daemon.rss_fill_peak > 0 and daemon.rss_steady > 0
        assert summary["b/a"] == pytest.approx(summary["daemon"] / summary["bare"])
        assert summary["b/c"] == pytest.approx(summary["daemon"] / summary["peer"])
        assert summary["daemon"] == daemon.steady_rate
        assert summary["b/a whole"] == pytest.approx(daemon.rate / runs["bare"][0].rate)
    # Two processes of each kind in one group, on the first topic: between them every record,
    # and a steady state on their merged offsets.
    for kind in ("bare", "daemon"):
        (run,) = result["group"][kind]
        assert sum(run.extra["split"]) >= 6000, kind
        assert run.steady is not None and 0 < run.steady.events <= 6000, kind
    text = out.read_text()
    assert "(b2)/(a2) = " in text and "in steady state (target >= 0.7: **" in text
    assert "## 10 models, 6,000 events" in text and "## 20 models, 6,000 events" in text
    assert "| (b) driftwarden end to end |" in text
    assert "| (b)/(a) |" in text and "| (b)/(c) |" in text
    assert "`kafka` settings: the defaults but {'max_poll_records': 300}" in text
    assert f"ends before {STEADY_END:.0%}" in text
    # The older figures below the heading are kept, after the new ones.
    assert text.index("## 20 models") < text.index(BEFORE_HEADING)
    assert text.endswith("the baseline table\n") and "old run" not in text


@pytest.mark.timeout(180)
async def test_latency_harness_measures_each_surge_after_the_warmup(
    broker: EmbeddedBroker, unique: str
) -> None:
    # Daemon and producer in their own processes, as in the full run, at a rate the shared
    # CI machine sustains. Surges start after the warm-up; each must be found and flipped.
    cfg = BenchConfig(
        models=(50,),
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
    assert result["drain_s"] == result["drain_s"]  # the daemon kept up at this rate
    text = "\n".join(render_latency(cfg, result))
    assert f"**{result['incidents']} breaches**" in text
    assert "p99 <= 1 s at 50,000 events/s: **not measured at 50,000 events/s**" in text
