"""The throughput bench's two-process, latency and memory measures, without a broker: merged
offsets of two processes sharing partitions over a rebalance, the flag file watcher against the
daemon's own flagd writer, the breach-to-write matching, the memory runs' sizes and the verdict
each result line gives against its target.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import pytest

from bench.throughput import (
    AUTO_POLICY,
    INCIDENT_FLAG,
    LEAK_FROM,
    LEAK_MARGIN,
    MEMORY_POLICY,
    BenchConfig,
    FlagFileWatcher,
    Run,
    Stream,
    leak_models,
    match_latencies,
    memory_events,
    memory_need,
    merge_samples,
    render_group,
    render_latency,
    render_memory,
    split_phases,
)
from monitor.flags.flagd_file import FlagdFileBackend
from tests.conftest import wait_for


def test_merged_offsets_ignore_what_a_process_still_reports_for_a_revoked_partition() -> None:
    # Process a read partition 1 to 10, lost it in a rebalance and keeps reporting 10 for it
    # while b, its new owner, goes on to 40: the merged timeline never goes back to 10.
    a = [(1.0, {0: 10, 1: 10}, 5.0), (3.0, {0: 30, 1: 10}, 6.0), (5.0, {0: 50, 1: 10}, 6.0)]
    b = [(2.0, {1: 20}, 7.0), (4.0, {1: 40}, 8.0)]
    merged = merge_samples([a, b])
    assert [pos[1] for _, pos, _ in merged] == [10, 20, 20, 40, 40]
    # So no record is counted twice: the phases add up to what was read, 50 + 40.
    stream = Stream("t", 2, {0: 100, 1: 100}, need=1, fill={0: 0, 1: 0})
    phases = split_phases(merged, 0.0, stream)
    assert phases.steady is not None and phases.steady.events == 90


def test_the_watcher_sees_each_write_that_turns_the_flag_on_from_the_daemons_writer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flags.json"

    async def go() -> FlagFileWatcher:
        watcher = FlagFileWatcher(path, INCIDENT_FLAG, poll_s=0.002)
        watching = asyncio.create_task(watcher.run())
        backend = FlagdFileBackend(path)
        try:
            for value in (False, True, True, False, True):
                await backend.set(INCIDENT_FLAG, value)
                await backend.set("another-flag", value)  # a write that turns nothing on
                version = FlagFileWatcher.version(path)
                await wait_for(lambda v=version: watcher.seen == v, timeout=5)
                assert watcher.on is value
        finally:
            watcher.stop()
            await watching
        return watcher

    watcher = asyncio.run(go())
    # off -> on twice; the repeated `on` and the other flag's writes are no turn.
    assert len(watcher.turned_on) == 2 and watcher.turned_on == sorted(watcher.turned_on)


def test_the_watcher_skips_a_file_that_is_not_a_flag_definition(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    watcher = FlagFileWatcher(path, INCIDENT_FLAG)
    watcher.poll()  # no file yet
    for text in ("{not json", '{"flags": []}', '{"flags": {"other": {}}}', '{"flags": {"%s": 1}}'):
        path.write_text(text.replace("%s", INCIDENT_FLAG))
        watcher.poll()
        assert (watcher.writes, watcher.seen, watcher.turned_on) == (0, None, []), text
    path.write_text(json.dumps({"flags": {INCIDENT_FLAG: {"defaultVariant": "on"}}}))
    before = time.time()
    watcher.poll()
    assert watcher.on and watcher.seen == FlagFileWatcher.version(path)
    assert len(watcher.turned_on) == 1 and watcher.turned_on[0] >= before


def test_each_breach_is_matched_in_order_to_the_first_write_no_earlier_breach_took() -> None:
    latencies = match_latencies([10.0, 20.0, 30.0], [10.25, 31.0])
    assert latencies[0] == pytest.approx(0.25)
    # A daemon behind by more than the period: 31.0 answers the breach at 20, not the one at
    # 30 (which would make a 1 s latency of a 11 s one); the last breach has none left.
    assert latencies[1] == pytest.approx(11.0)
    assert math.isnan(latencies[2])
    # A write before any breach (the flag's first state) answers none.
    assert match_latencies([5.0], [1.0, 5.5]) == [pytest.approx(0.5)]


def test_the_memory_runs_default_to_the_auto_policys_references() -> None:
    assert MEMORY_POLICY == AUTO_POLICY
    # Discovery's 200 events, then the default reference of 10,000 and a window of 1,000.
    need = memory_need(AUTO_POLICY)
    assert need == 200 + 10_000 + 1_000
    # The fill run lasts past every model's need; the leak check's models are all full, with
    # a margin, by its first sample.
    assert memory_events(AUTO_POLICY, 1000) >= need * 1000 + 1_000_000
    n = leak_models(AUTO_POLICY, 1000)
    assert n * need * LEAK_MARGIN <= LEAK_FROM < (n + 1) * need * LEAK_MARGIN


def _memory_report(rss: dict[int, float], full: dict[int, float], peak: float) -> dict[str, object]:
    last = max(rss)
    steady = rss[last] if full[last] >= 1.0 else math.nan
    return {
        "policy": "policy_auto.yaml",
        "models": 10,
        "detectors": 290,
        "seconds": 1.0,
        "rss_mib": rss,
        "full": full,
        "peak_rss_mib": peak,
        "steady_rss_mib": steady,
        "fill_peak_ratio": peak / steady,
        "growth_1m_to_end": (rss[last] - rss[LEAK_FROM]) / rss[LEAK_FROM],
        "full_at_1m": full[LEAK_FROM],
    }


def test_the_memory_lines_say_each_target_and_whether_it_is_met() -> None:
    text = "\n".join(
        render_memory(
            {
                "default": _memory_report(
                    {1_000_000: 500, 2_000_000: 400}, {1_000_000: 0.5, 2_000_000: 1.0}, 900
                ),
                "leak": _memory_report(
                    {1_000_000: 300, 2_000_000: 309}, {1_000_000: 1.0, 2_000_000: 1.0}, 310
                ),
            }
        )
    )
    assert "2.25x (target <= 1.2x: **missed**)" in text
    assert "+3.0% (target within 5%: **met**)" in text
    unfilled = "\n".join(
        render_memory(
            {
                "default": _memory_report(
                    {1_000_000: 500, 2_000_000: 450}, {1_000_000: 0.5, 2_000_000: 0.9}, 480
                ),
                "leak": _memory_report(
                    {1_000_000: 300, 2_000_000: 300}, {1_000_000: 0.9, 2_000_000: 1.0}, 310
                ),
            }
        )
    )
    # Without a steady state there is no ratio to judge, and a leak check still filling at
    # its first sample says so rather than passing.
    assert "(target <= 1.2x: **not measured**)" in unfilled
    assert "(target within 5%: **not measured**: some reference" in unfilled


def _latency(p99: float, missed: int, rate: float = 50_000.0) -> dict[str, object]:
    return {
        "produced": int(rate * 72),
        "produced_per_s": rate,
        "producer_max_behind_s": 0.01,
        "drain_s": 0.4,
        "incidents": 22,
        "flag_writes": 22 - missed,
        "missed": missed,
        "p50_s": p99 / 2,
        "p99_s": p99,
        "max_s": p99,
        "audit_p99_s": p99,
    }


@pytest.mark.parametrize(
    ("p99", "missed", "rate", "verdict"),
    [
        (0.8, 0, 50_000.0, "met"),
        (1.3, 0, 50_000.0, "missed"),
        (0.8, 1, 50_000.0, "missed"),  # a breach never flagged is past any bound
        (0.8, 0, 30_000.0, "not measured at 50,000 events/s"),
    ],
)
def test_the_latency_line_says_the_target_and_whether_it_is_met(
    p99: float, missed: int, rate: float, verdict: str
) -> None:
    text = "\n".join(render_latency(BenchConfig(latency=True), _latency(p99, missed, rate)))
    assert f"p99 <= 1 s at 50,000 events/s: **{verdict}**" in text
    assert "**22 breaches**" in text


def _group_run(name: str, steady_events: int, seconds: float) -> Run:
    run = Run(name, 1000, seconds * 2)
    run.steady = split_phases(
        [(seconds, {0: steady_events}, 1.0)],
        0.0,
        Stream("t", 1, {0: 10 * steady_events}, need=1, fill={0: 0}),
    ).steady
    return run


def test_the_two_process_line_gives_the_steady_ratio_of_medians_and_its_verdict() -> None:
    stream = Stream("t", 200, {0: 1000}, need=1, fill={0: 0})
    group = {
        "bare": [_group_run("(a2)", 1000, 1.0), _group_run("(a2)", 1000, 2.0)],
        "daemon": [_group_run("(b2)", 400, 1.0), _group_run("(b2)", 400, 1.0)],
    }
    text = "\n".join(render_group(stream, group))
    # Medians: (a2) 750 events/s, (b2) 400: 0.53.
    assert "(b2)/(a2) = 0.53 in steady state (target >= 0.7: **missed**)" in text
