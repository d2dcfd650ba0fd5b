"""Replay: transitions at the right lines on event time, flags and alerts derived from the
policy, bad lines skipped by number, gzip input, the summary shape, the report, scoring."""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
from pathlib import Path

import pytest

from monitor.cli.replay import register
from monitor.config.policy import Level, LevelActions, ModelPolicy
from monitor.config.settings import load_settings
from monitor.engine.health import Cause, Transition
from monitor.tools.replay import (
    Incident,
    ModelTrail,
    Replay,
    SeriesRecorder,
    _Coverage,
    load_truth,
    open_events,
    replay_file,
    score,
)
from tests.replay.streams import expected_transitions, lines, write_policy, write_stream

N = 20_000


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("replay")
    return {
        "policy": write_policy(root / "policy.yaml"),
        "events": write_stream(root / "events.jsonl", N),
        "root": root,
    }


@pytest.mark.parametrize("chunk", [1, 16, 64])
def test_scripted_incident_gives_one_transition_up_and_one_back_at_the_right_lines(
    files: dict[str, Path], chunk: int
) -> None:
    settings = load_settings(files["policy"])
    result = replay_file(files["events"], settings, chunk_size=chunk)
    transitions = result.summary()["models"]["fraud"]["transitions"]
    expected = expected_transitions(N)
    assert [(t["from"], t["to"]) for t in transitions] == [(f, t) for _, f, t in expected]
    for got, (line, _, _) in zip(transitions, expected, strict=True):
        # The breach (or health) is seen at the end of a chunk, and `for` (or
        # `recover_after`) runs out at the end of a later one: each costs up to a chunk.
        # A tick between events attributes to the line before it.
        assert line - 1 <= got["index"] <= line + 2 * (chunk - 1), (got, line)
        assert got["ts"] == pytest.approx(1_700_000_000.0 + got["index"] * 0.01, abs=0.011)
    assert transitions[0]["signals"] == ["error_rate"]
    assert result.events == N and result.bad_lines == 0


def test_flags_and_alerts_follow_the_levels_entered_and_are_restored_on_recovery(
    files: dict[str, Path],
) -> None:
    result = replay_file(files["events"], load_settings(files["policy"]), chunk_size=16)
    fraud = result.summary()["models"]["fraud"]
    up, down = (t["index"] for t in fraud["transitions"])
    assert [(f["index"], f["flag"], f["action"], f["value"]) for f in fraud["flags"]] == [
        (up, "variant", "set", "rules"),
        (down, "variant", "restore", None),
    ]
    assert [(a["index"], a["action"], a["severity"]) for a in fraud["alerts"]] == [
        (up, "fire", "page"),
        (down, "resolve", "page"),
    ]
    assert fraud["signals"] == {
        "error_rate": {"transitions": 1, "alerts": 1},
        "latency_p99": {"transitions": 0, "alerts": 0},
    }


def test_escalation_sets_higher_level_flags_and_stepping_down_restores_only_those() -> None:
    policy = ModelPolicy(
        actions={
            "warn": LevelActions(),
            "degraded": LevelActions(flags={"variant": "rules"}, alert={"severity": "page"}),
            "critical": LevelActions(flags={"enabled": False}, alert={"severity": "critical"}),
        }
    )
    trail = ModelTrail("m", policy)
    for k, (a, b) in enumerate([(0, 2), (2, 3), (3, 2), (2, 1), (1, 0)]):
        trail.record(Transition("m", Level(a), Level(b), float(k), ()), k)
    assert [(f["index"], f["flag"], f["action"]) for f in trail.flags] == [
        (0, "variant", "set"),
        (1, "enabled", "set"),
        (2, "enabled", "restore"),
        (3, "variant", "restore"),
    ]
    # warn has no alert in this policy: the page keeps firing through it until ok.
    assert [(a["index"], a["action"], a["severity"]) for a in trail.alerts] == [
        (0, "fire", "page"),
        (1, "update", "critical"),
        (2, "update", "page"),
        (4, "resolve", "page"),
    ]


def test_bad_lines_are_reported_by_number_and_skipped_and_the_summary_has_its_shape(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = list(lines(3000))
    good[10:10] = ["not json", '{"latency_ms": 3}', "", '{"model": 5}']
    events = tmp_path / "mixed.jsonl.gz"
    with gzip.open(events, "wt", encoding="utf-8") as f:
        f.write("\n".join(good) + "\n")
    summary_path = tmp_path / "summary.json"
    code = run_cli(
        [
            "replay",
            str(events),
            "-c",
            str(files["policy"]),
            "--summary",
            str(summary_path),
            "--report",
            str(tmp_path / "r.html"),
            "-q",
        ]
    )
    assert code == 0
    summary = json.loads(summary_path.read_text())
    assert summary["events"] == 3000
    assert summary["bad_lines"] == 4
    assert [(b["line"], b["reason"]) for b in summary["bad"]] == [
        (10, "not_json"),
        (11, "missing_model"),
        (12, "empty"),
        (13, "wrong_type"),
    ]
    assert set(summary) >= {
        "version",
        "events",
        "bad_lines",
        "bad",
        "models",
        "first_ts",
        "last_ts",
    }
    model = summary["models"]["fraud"]
    assert set(model) >= {"transitions", "flags", "alerts", "signals", "final_state", "mode"}
    assert model["events"] == 3000
    out = capsys.readouterr().out
    assert "line 10: not_json" in out and "events/s" in out


def test_gzip_input_replays_exactly_like_the_plain_file(
    files: dict[str, Path], tmp_path: Path
) -> None:
    packed = tmp_path / "events.jsonl.gz"
    packed.write_bytes(gzip.compress(files["events"].read_bytes()))
    settings = load_settings(files["policy"])
    plain = replay_file(files["events"], settings).summary()
    zipped = replay_file(packed, settings).summary()
    assert zipped["models"] == plain["models"]
    assert zipped["events"] == plain["events"] == N


def test_report_is_self_contained_with_one_svg_per_model(
    files: dict[str, Path], tmp_path: Path
) -> None:
    events = tmp_path / "two.jsonl"
    both = [*lines(12_000, "fraud"), *lines(3000, "search")]
    both.sort(key=lambda line: json.loads(line)["ts"])
    events.write_text("\n".join(both) + "\n")
    report = tmp_path / "report.html"
    assert (
        run_cli(["replay", str(events), "-c", str(files["policy"]), "--report", str(report), "-q"])
        == 0
    )
    page = report.read_text()
    assert page.count("<svg") == 2
    assert 'id="model-fraud"' in page and 'id="model-search"' in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "<polyline" in page  # the signal statistic is drawn
    assert "degraded threshold" in page  # policy thresholds drawn as lines


def test_series_recorder_stays_bounded_and_keeps_the_worst_reading() -> None:
    rec = SeriesRecorder(["s"], [True], max_points=100)
    for i in range(200_000):
        rec.add(i * 0.01, [50.0 if i == 123_456 else 1.0], [math.nan])
    assert len(rec.times) <= 100
    assert max(rec.values[0]) == 50.0


def _incident_case() -> tuple[dict[str, ModelTrail], list[Incident], dict[str, _Coverage]]:
    incidents = [
        Incident("m", 100.0, 200.0, ("error_rate",)),
        Incident("m", 500.0, 600.0, ("latency",)),
    ]
    policy = ModelPolicy(
        signals=[
            {"name": "error_rate", "source": "error"},
            {"name": "latency", "source": "latency_ms"},
        ]
    )
    trail = ModelTrail("m", policy)
    script = [
        (150.0, 0, 2, ("error_rate",)),  # detects incident 1 after 50 s
        (250.0, 2, 0, ()),
        (300.0, 0, 1, ("latency",)),  # outside every window: a false alarm
        (320.0, 1, 2, ("error_rate",)),  # same episode: no new model alarm
        (350.0, 2, 0, ()),
        # nothing during incident 2: a miss
    ]
    for k, (t, a, b, signals) in enumerate(script):
        causes = tuple(Cause(s, Level(b), 1.0, 0.5, 0.5, 1.0) for s in signals)
        trail.record(Transition("m", Level(a), Level(b), t, causes), k)
    cover = _Coverage([(i.start, i.end, k) for k, i in enumerate(incidents)])
    for second in range(0, 1001):
        cover.see(float(second))
    return {"m": trail}, incidents, {"m": cover}


def test_truth_scoring_counts_false_alarms_misses_and_delays_beside_baselines() -> None:
    trails, incidents, coverage = _incident_case()
    result = score(trails, incidents, coverage, grace=0.0)
    m = result["models"]["m"]
    assert m["incidents"] == 2
    assert {k: m["policy"][k] for k in ("alarms", "false_alarms", "detected", "misses")} == {
        "alarms": 2,
        "false_alarms": 1,
        "detected": 1,
        "misses": 1,
    }
    assert m["policy"]["delay_s"]["mean"] == 50.0
    assert m["never_fire"]["misses"] == 2 and m["never_fire"]["false_alarms"] == 0
    # Events every second: outside stretches are [0,100), (200,500), (600,1000].
    assert m["always_fire"]["false_alarms"] == 3
    assert m["always_fire"]["detected"] == 2 and m["always_fire"]["delay_s"]["max"] == 0.0
    err, lat = m["signals"]["error_rate"], m["signals"]["latency"]
    # error_rate is first named in the second episode by the escalation at 320: its alarm.
    assert err["incidents"] == 1 and err["policy"]["false_alarms"] == 1
    assert err["policy"]["misses"] == 0 and err["policy"]["delay_s"]["mean"] == 50.0
    # For error_rate alone, incident 2's window is ordinary traffic: two outside stretches.
    assert err["always_fire"]["false_alarms"] == 2
    # latency's only alarm (t=300) is outside its incident: one false alarm and one miss.
    assert lat["policy"]["false_alarms"] == 1 and lat["policy"]["misses"] == 1
    assert result["total"]["policy"]["misses"] == 1


def test_grace_lets_a_late_detection_count() -> None:
    trails, incidents, coverage = _incident_case()
    trails["m"].record(Transition("m", Level.OK, Level.WARN, 630.0, ()), 9)
    assert score(trails, incidents, coverage, grace=0.0)["models"]["m"]["policy"]["misses"] == 1
    late = score(trails, incidents, coverage, grace=60.0)["models"]["m"]["policy"]
    assert late["misses"] == 0 and late["delay_s"]["max"] == 130.0


def test_replay_with_truth_file_scores_the_scripted_incident(
    files: dict[str, Path], tmp_path: Path
) -> None:
    truth = tmp_path / "truth.jsonl"
    truth.write_text(
        "# the scripted incident\n"
        '{"model": "fraud", "start": 1700000050, "end": 1700000080, "signals": ["error_rate"]}\n'
    )
    summary = tmp_path / "s.json"
    assert (
        run_cli(
            [
                "replay",
                str(files["events"]),
                "-c",
                str(files["policy"]),
                "--truth",
                str(truth),
                "--summary",
                str(summary),
                "--no-report",
                "-q",
            ]
        )
        == 0
    )
    scored = json.loads(summary.read_text())["score"]["models"]["fraud"]
    line = expected_transitions(N)[0][0]
    assert scored["policy"]["false_alarms"] == 0 and scored["policy"]["misses"] == 0
    assert scored["policy"]["delay_s"]["mean"] == pytest.approx(line * 0.01 - 50.0, abs=0.2)
    assert scored["always_fire"]["false_alarms"] == 2


def test_truth_file_errors_name_the_line_and_exit_2(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = tmp_path / "truth.jsonl"
    truth.write_text('{"model": "fraud", "start": 10, "end": 5}\n{"model": "x", "start": "soon"}\n')
    code = run_cli(
        [
            "replay",
            str(files["events"]),
            "-c",
            str(files["policy"]),
            "--truth",
            str(truth),
            "--no-report",
            "-q",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "line 1: end (5.0) is before start (10.0)" in err
    assert "line 2: start: 'soon' is not an RFC 3339 time" in err


def test_events_without_ts_take_the_replay_clock_and_late_events_do_not_rewind_it(
    files: dict[str, Path],
) -> None:
    stream = [
        b'{"model": "a", "ts": 100.0}',
        b'{"model": "a"}',
        b'{"model": "a", "ts": 50.0}',
        b'{"model": "a", "ts": 101.5}',
    ]
    result = Replay(load_settings(files["policy"]), chunk_size=1).run(iter(stream))
    assert (result.first_ts, result.last_ts, result.events) == (100.0, 101.5, 4)


def test_example_recording_replays_with_its_bad_lines_and_catches_the_known_incident() -> None:
    root = Path(__file__).resolve().parents[2] / "examples" / "events"
    replay = Replay(load_settings(root / "policy.yaml"), truth=load_truth(root / "truth.jsonl"))
    with open_events(root / "checkout-incident.jsonl.gz") as stream:
        out = replay.run(iter(stream)).summary()
    assert (out["events"], out["bad_lines"]) == (12_000, 3)
    assert [b["line"] for b in out["bad"]] == [1500, 4000, 9000]
    scored = out["score"]["models"]["fraud-scorer"]["policy"]
    assert (scored["false_alarms"], scored["misses"]) == (0, 0)
    assert out["models"]["search-ranker"]["transitions"] == []
