"""The throughput bench's steady-state arithmetic, without a broker: where each partition's
steady state starts (from the policy and the loaded stream), how a run's samples split into
fill and steady phases, and how bad bench arguments are refused.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
import yaml

from bench.throughput import (
    AUTO_POLICY,
    BEFORE_HEADING,
    BENCH_POLICY,
    STEADY_POLICY,
    BenchConfig,
    SteadyMark,
    Stream,
    events_to_steady,
    kafka_tuning,
    kept_part,
    main,
    merge_samples,
    partition_of,
    split_phases,
    steady_need,
)
from monitor.config.settings import load_settings
from monitor.engine.events import Event
from monitor.tools.traffic import synthetic_batches


def _sample_events() -> list[Event]:
    decode = msgspec.json.Decoder(Event).decode
    return [decode(v) for v in next(synthetic_batches(500, 1, seed=3))[1]]


def test_events_to_steady_is_the_widest_reference_plus_its_window() -> None:
    sample = _sample_events()
    # References of 1,000 and windows of 1,000 for all 14 signals.
    assert events_to_steady(load_settings(STEADY_POLICY), "model-0000", sample) == 2000
    # The auto policy observes 200 events, then feeds the signals it discovered from the
    # next one on: their default references of 10,000 and windows of 1,000 fill after.
    assert events_to_steady(load_settings(AUTO_POLICY), "model-0000", sample) == 200 + 11_000
    assert steady_need(AUTO_POLICY, 3) == 11_200


def test_events_to_steady_counts_no_reference_where_none_is_filled(tmp_path: Path) -> None:
    policy = {
        "models": {
            "default": {
                "signals": [
                    # An absolute threshold: tests from its first full window, no reference.
                    {
                        "name": "errors",
                        "source": "error",
                        "detector": {"type": "rate_window", "window": 300, "min_samples": 100},
                        "thresholds": {"degraded": 0.5},
                    }
                ]
            },
            "other": {
                "signals": [
                    {
                        "source": "latency_ms",
                        "detector": {
                            "type": "ks_window",
                            "window": 500,
                            "reference": {"size": 700},
                        },
                    }
                ]
            },
        }
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    settings = load_settings(path)
    sample = _sample_events()
    assert events_to_steady(settings, "model-0000", sample) == 300
    assert events_to_steady(settings, "other", sample) == 1200


@pytest.mark.parametrize("need", [0, 1, 7, 40])
def test_steady_mark_is_where_the_last_model_of_each_partition_has_its_nth_event(
    need: int,
) -> None:
    rng = np.random.default_rng(need)
    n_models, partitions = 13, 4
    stream = rng.integers(0, n_models, size=400).tolist()
    mark = SteadyMark(n_models, partitions, need)
    for m in stream:
        mark.add(m)

    # Brute force: replay each partition's records and find the first offset after which
    # every model of it that has events at all has had `need` of them.
    for p, got in mark.offsets().items():
        records = [m for m in stream if partition_of(m, partitions) == p]
        assert mark.counts[p] == len(records)
        models = set(records)
        expected: int | None = None
        for end in range(len(records) + 1):
            if all(records[:end].count(m) >= need for m in models):
                expected = end
                break
        assert got == expected, p


def test_steady_mark_is_none_where_some_model_never_fills() -> None:
    mark = SteadyMark(n_models=4, partitions=2, need=3)
    for m in [0, 0, 0, 2, 2, 2, 1, 1, 3, 3, 3, 3]:
        mark.add(m)
    # Partition 0 holds models 0 and 2 (3 events each); partition 1 models 1 (2) and 3.
    assert mark.offsets() == {0: 6, 1: None}


def _stream(fill: dict[int, int | None]) -> Stream:
    return Stream("t", 2, {0: 100, 1: 100}, 10, fill)


def test_split_phases_counts_each_batch_in_the_phase_its_records_are_in() -> None:
    # Marks: partition 0 at 40, partition 1 at 35; 95% of 200 records is 190.
    samples = [
        (10.0, {0: 20}, 100.0),  # fill (first batch: timed from the first record, 9.0)
        (11.0, {0: 40, 1: 30}, 150.0),  # fill: partition 1 before its mark
        (12.0, {0: 60, 1: 30}, 140.0),  # steady: only partition 0, past its mark
        (14.0, {0: 60, 1: 35}, 160.0),  # fill: partition 1's last records before its mark
        (15.0, {0: 90, 1: 80}, 120.0),  # steady
        (17.0, {0: 100, 1: 90}, 125.0),  # steady: ends at 190
        (18.0, {0: 100, 1: 95}, 130.0),  # the tail: past 95%
        (19.0, {0: 100, 1: 100}, 125.0),
    ]
    phases = split_phases(samples, 9.0, _stream({0: 40, 1: 35}))
    fill, steady = phases.fill, phases.steady
    assert fill is not None and steady is not None
    assert (fill.events, fill.seconds, fill.batches) == (20 + 50 + 5, 1.0 + 1.0 + 2.0, 3)
    assert (steady.events, steady.seconds, steady.batches) == (20 + 75 + 20, 1.0 + 1.0 + 2.0, 3)
    assert (steady.start, steady.end) == (70, 190)
    assert steady.rate == pytest.approx(115 / 4)
    assert (phases.rss_fill_peak, phases.rss_steady) == (160.0, 125.0)


@pytest.mark.parametrize(
    ("fill", "why"),
    [
        ({0: 40, 1: None}, "a model of partition 1 never fills"),
        ({0: 100, 1: 100}, "the marks are the stream's end, past 95%"),
    ],
)
def test_split_phases_gives_no_steady_state_when_the_stream_never_reaches_one(
    fill: dict[int, int | None], why: str
) -> None:
    samples = [(1.0, {0: 50, 1: 50}, 1.0), (2.0, {0: 100, 1: 100}, 1.0)]
    phases = split_phases(samples, 0.0, _stream(fill))
    assert phases.steady is None, why
    # Every batch holds records before some mark: all of the run is fill.
    assert phases.fill is not None and phases.fill.events == 200


def test_merge_samples_keeps_each_partitions_latest_offset_over_both_processes() -> None:
    a = [(1.0, {0: 10}, 5.0), (3.0, {0: 30}, 6.0)]
    b = [(2.0, {1: 20}, 7.0), (4.0, {1: 40}, 8.0)]
    merged = merge_samples([a, b])
    assert [(t, pos) for t, pos, _ in merged] == [
        (1.0, {0: 10}),
        (2.0, {0: 10, 1: 20}),
        (3.0, {0: 30, 1: 20}),
        (4.0, {0: 30, 1: 40}),
    ]


def test_the_steady_policies_keep_the_daemons_default_kafka_settings() -> None:
    assert kafka_tuning(STEADY_POLICY) == {}
    assert kafka_tuning(AUTO_POLICY) == {}
    assert kafka_tuning(BENCH_POLICY)["max_poll_records"] == 100_000


@pytest.mark.parametrize(
    ("cfg", "named"),
    [
        (BenchConfig(models=(200, 1000), events=(1, 2, 3)), "events"),
        (BenchConfig(models=(), events=(1,)), "models"),
        (BenchConfig(models=(0,), events=(1,)), "models"),
        (BenchConfig(models=(5,), events=(-3,)), "events"),
        (BenchConfig(models=(5,), events=(10,), repeats=0), "repeats"),
    ],
)
def test_bad_counts_are_refused_naming_what(cfg: BenchConfig, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        cfg.sets()


def test_one_event_count_serves_every_model_count() -> None:
    assert BenchConfig(models=(200, 1000), events=(5,)).sets() == [(200, 5), (1000, 5)]


@pytest.mark.parametrize(
    "argv",
    [
        ["--models", "200", "1000", "--events", "1", "2", "3"],
        ["--models", "ten"],
        ["--policy", "/nonexistent/policy.yaml"],
    ],
)
def test_the_command_line_refuses_bad_arguments_before_starting_a_broker(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_the_report_keeps_what_follows_its_before_heading(tmp_path: Path) -> None:
    out = tmp_path / "throughput.md"
    assert kept_part(out) == ""
    out.write_text(f"# Throughput\n\nnew figures\n\n{BEFORE_HEADING} (2026-11-25)\n\nold table\n")
    assert kept_part(out) == f"\n{BEFORE_HEADING} (2026-11-25)\n\nold table\n"
    out.write_text("# Throughput\n\nno older figures\n")
    assert kept_part(out) == ""
