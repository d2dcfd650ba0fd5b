"""The demo's script, policy, tracker, live view and CLI, without a broker."""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import logging
import random
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from monitor.cli import demo as cli_demo
from monitor.cli import main as cli
from monitor.config.settings import load_settings
from monitor.tools.demo import (
    Demo,
    DemoOptions,
    IncidentTracker,
    demo_config,
    read_flags,
    seed_flags,
    summary_lines,
)
from monitor.tools.traffic import (
    DEMO_MODELS,
    DEMO_SCRIPT,
    Incident,
    demo_script,
    make_event,
    script_length,
)

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "monitor" / "tools" / "demo_policy.yaml"


def test_embedded_demo_policy_passes_check_config() -> None:
    settings = load_settings(POLICY)
    assert set(DEMO_MODELS) <= set(settings.models)
    assert all(settings.policy_for(m).mode == "enforce" for m in DEMO_MODELS)


def test_demo_config_with_run_time_overrides_is_valid(tmp_path: Path) -> None:
    config = demo_config(
        "127.0.0.1:19092",
        http_port=0,
        flags_file=tmp_path / "flags.json",
        audit_log=tmp_path / "audit.jsonl",
        webhook_url="http://127.0.0.1:9/hook",
    )
    import yaml

    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path)
    assert settings.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert settings.http.port == 0
    assert settings.flags is not None and Path(settings.flags.path) == tmp_path / "flags.json"  # type: ignore[union-attr]
    assert [s.type for s in settings.alerts.sinks] == ["console", "webhook"]


def test_each_incident_sets_its_flag_at_its_level_in_the_policy() -> None:
    settings = load_settings(POLICY)
    for incident in DEMO_SCRIPT:
        actions = settings.policy_for(incident.model).actions
        level_actions = actions[incident.level]  # type: ignore[index]
        assert level_actions.flags.get(incident.flag) == incident.value, incident.name
        assert type(incident.value) is type(incident.healthy)
        assert incident.value != incident.healthy


def test_incidents_of_one_model_are_spaced_for_recovery_and_cooldown() -> None:
    settings = load_settings(POLICY)
    by_model: dict[str, list[Incident]] = {}
    for incident in DEMO_SCRIPT:
        by_model.setdefault(incident.model, []).append(incident)
    for model, incidents in by_model.items():
        health = settings.policy_for(model).health
        incidents.sort(key=lambda i: i.start_s)
        for before, after in itertools.pairwise(incidents):
            # The window drains (~1 s), the model stays healthy for recover_after, then the
            # cooldown must pass before the next incident can escalate.
            gap = after.start_s - before.end_s
            assert gap >= 1.0 + health.recover_after + health.cooldown - health.for_, model


def test_every_incident_kind_and_model_appears_in_the_script() -> None:
    assert {i.kind for i in DEMO_SCRIPT} == {
        "feature_drift",
        "latency_spike",
        "error_surge",
        "engagement_drop",
    }
    assert {i.model for i in DEMO_SCRIPT} == set(DEMO_MODELS)


def _rates(model: str, kinds: frozenset[str], n: int = 2000) -> dict[str, float]:
    rng = random.Random(3)
    events = [make_event(model, i, kinds, rng) for i in range(n)]
    latencies = sorted(e["latency_ms"] for e in events)
    feedback = [e["feedback"] for e in events if "feedback" in e]
    amounts = sorted(e["features"]["amount"] for e in events if "amount" in e.get("features", {}))
    return {
        "errors": sum(e["error"] for e in events) / n,
        "p95": latencies[int(0.95 * n)],
        "liked": sum(feedback) / len(feedback) if feedback else float("nan"),
        "amount_median": amounts[len(amounts) // 2] if amounts else float("nan"),
    }


def test_each_incident_kind_breaks_only_its_own_signal() -> None:
    healthy = _rates("search-ranker", frozenset())
    assert healthy["errors"] < 0.02 and healthy["p95"] < 250
    slow = _rates("search-ranker", frozenset({"latency_spike"}))
    assert slow["p95"] > 250 and slow["errors"] < 0.02
    failing = _rates("search-ranker", frozenset({"error_surge"}))
    assert failing["errors"] > 0.3 and failing["p95"] < 250

    chat = _rates("chat-assistant", frozenset())
    dropped = _rates("chat-assistant", frozenset({"engagement_drop"}))
    assert chat["liked"] > 0.7 and dropped["liked"] < 0.4
    assert dropped["p95"] < 2500 and dropped["errors"] < 0.02

    fraud = _rates("fraud-scorer", frozenset())
    drifted = _rates("fraud-scorer", frozenset({"feature_drift"}))
    assert drifted["amount_median"] > 4 * fraud["amount_median"]
    assert drifted["p95"] < 250 and drifted["errors"] < 0.02


def test_tracker_counts_detection_and_flip_only_after_the_incident_started() -> None:
    inc = Incident("m", "latency_spike", 5.0, 10.0, "m-variant", "fallback", "model", "degraded")
    tracker = IncidentTracker((inc,), period_s=None)
    tracker.observe(1.0, {"m": "degraded"}, {"m-variant": "fallback"})
    assert tracker.reports == []
    tracker.observe(5.5, {"m": "warn"}, {"m-variant": "model"})
    tracker.observe(7.0, {"m": "degraded"}, {"m-variant": "fallback"})
    tracker.observe(12.0, {"m": "ok"}, {"m-variant": "fallback"})
    tracker.observe(13.0, {"m": "ok"}, {"m-variant": "model"})
    [report] = tracker.reports
    assert (report.detected_at, report.flipped_at) == (7.0, 7.0)
    assert (report.recovered_at, report.restored_at) == (12.0, 13.0)
    assert report.worst == "degraded"
    assert summary_lines([report])[-1] == (
        "1 incidents: 1 detected, 1 recovered, 1 flags flipped, 1 restored"
    )


def test_tracker_does_not_count_a_flag_set_to_a_third_value_as_restored() -> None:
    inc = Incident("m", "error_surge", 0.0, 2.0, "m-variant", "off", "on", "critical")
    tracker = IncidentTracker((inc,), period_s=None)
    tracker.observe(1.0, {"m": "critical"}, {"m-variant": "off"})
    tracker.observe(3.0, {"m": "ok"}, {"m-variant": "pinned-by-operator"})
    assert tracker.reports[0].restored_at is None


def test_tracker_opens_one_report_per_cycle_when_the_script_repeats() -> None:
    inc = Incident("m", "error_surge", 1.0, 2.0, "f", False, True, "critical")
    tracker = IncidentTracker((inc,), period_s=10.0)
    for t in (1.5, 5.0, 11.5, 15.0):
        tracker.observe(t, {"m": "critical" if t % 10 < 3 else "ok"}, {})
    assert [(r.cycle, r.started_at, r.recovered_at) for r in tracker.reports] == [
        (0, 1.0, 5.0),
        (1, 11.0, 15.0),
    ]


def test_seed_flags_defines_healthy_values_and_keeps_existing_flags(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text(
        '{"flags": {"search-ranker-enabled": {"state": "ENABLED", '
        '"variants": {"on": true, "off": false}, "defaultVariant": "off"}}}'
    )
    seed_flags(path, DEMO_SCRIPT)
    flags = read_flags(path)
    assert flags["search-ranker-enabled"] is False  # the service's own choice is kept
    for incident in DEMO_SCRIPT:
        if incident.flag != "search-ranker-enabled":
            assert flags[incident.flag] == incident.healthy


def test_live_view_shows_each_model_state_flags_and_alerts(tmp_path: Path) -> None:
    demo = Demo(DemoOptions(duration=10, ui=True, handle_signals=False))
    demo._last_flags = {"search-ranker-variant": "fallback", "search-ranker-enabled": True}
    reading = {"statistic": 923.4, "effect": 3.7, "threshold": 250, "verdict": "anomaly"}
    status = {
        "models": {
            "search-ranker": {
                "state": "degraded",
                "signals": {"latency_p95": {"level": "degraded", "readings": {"x": reading}}},
            },
            "fraud-scorer": {"state": "ok", "signals": {}},
        },
        "actions": {
            "recent": [
                {"kind": "transition", "model": "search-ranker", "from": "ok", "to": "degraded"},
                {"kind": "flag_applied", "flag": "search-ranker-variant", "value": "fallback"},
            ],
            "alerts": [
                {"model": "search-ranker", "alertname": "ModelUnhealthy", "severity": "page"}
            ],
        },
    }
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(demo.render(status))
    text = console.export_text()
    assert "search-ranker" in text and "DEGRADED" in text and "OK" in text
    assert "latency_p95: 923 / 250 degraded" in text
    assert 'search-ranker-variant="fallback"' in text
    assert "search-ranker ModelUnhealthy page" in text
    assert "search-ranker: ok -> degraded" in text
    assert 'flag search-ranker-variant = "fallback"' in text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftwarden")
    sub = parser.add_subparsers(dest="command")
    cli_demo.register(sub)
    return parser


def test_demo_subcommand_parses_its_options() -> None:
    args = _parser().parse_args(
        ["demo", "--duration", "30", "--port", "0", "--no-ui", "--flags-file", "/tmp/f.json"]
    )
    assert (args.duration, args.port, args.no_ui, args.flags_file) == (30.0, 0, True, "/tmp/f.json")
    assert args.func is cli_demo._demo
    defaults = _parser().parse_args(["demo"])
    assert (defaults.duration, defaults.port, defaults.no_ui) == (None, 8080, False)


@pytest.mark.parametrize("argv", [["--duration", "0"], ["--duration", "soon"], ["--port", "70000"]])
def test_demo_subcommand_refuses_bad_values(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["demo", *argv])
    assert exc.value.code == 2
    assert "demo: error: argument" in capsys.readouterr().err


def test_demo_is_listed_by_the_cli_once_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    registered = cli._extra_commands

    def with_demo() -> list[Any]:
        return [c for c in registered() if c is not cli_demo.register] + [cli_demo.register]

    monkeypatch.setattr(cli, "_extra_commands", with_demo)
    parser = cli.build_parser()
    assert "demo" in parser.format_help()
    assert parser.parse_args(["demo", "--no-ui"]).func is cli_demo._demo


async def test_first_ctrl_c_asks_for_a_stop_and_a_second_forces_it() -> None:
    demo = Demo(DemoOptions(handle_signals=False))
    daemon_task = asyncio.create_task(asyncio.sleep(60))
    demo._daemon_task = daemon_task
    demo.handle_exit(signal.SIGINT)
    await asyncio.sleep(0)
    assert demo._finished() and not daemon_task.done()
    demo.handle_exit(signal.SIGINT)
    await asyncio.gather(daemon_task, return_exceptions=True)
    assert daemon_task.cancelled() and demo._forced


@pytest.mark.parametrize("duration", [None, 40.0, 70.0, 90.0, 120.0, 600.0])
def test_incidents_come_one_at_a_time_and_finish_within_the_run(duration: float | None) -> None:
    settings = load_settings(POLICY)
    script = demo_script(duration)
    assert script, "no incident at all"
    for before, after in itertools.pairwise(script):
        health = settings.policy_for(before.model).health
        # The first one's detection, flag and recovery are over before the next one starts.
        assert after.start_s >= before.end_s + 1.0 + health.recover_after + 2.0, after.name
    if duration is not None:
        health = settings.policy_for(script[-1].model).health
        assert script[-1].end_s + 1.0 + health.recover_after + 2.0 <= duration


def test_a_long_run_spreads_its_incidents_and_a_short_one_keeps_those_that_fit() -> None:
    assert len(demo_script(script_length())) == len(DEMO_SCRIPT) == 4
    spread = demo_script(120.0)
    assert [i.name for i in spread] == [i.name for i in DEMO_SCRIPT]
    assert spread[-1].start_s > DEMO_SCRIPT[-1].start_s  # spaced out over the longer run
    assert spread[-1].end_s >= 0.75 * 120.0  # not over by the middle of the run
    assert len(demo_script(70.0)) == 3 and len(demo_script(10.0)) == 1


def test_live_view_shows_value_threshold_state_recovering_and_an_event_log() -> None:
    demo = Demo(DemoOptions(duration=90, ui=True, handle_signals=False))
    drift = {"statistic": 0.000012345, "effect": 0.1, "threshold": 0.125, "verdict": "ok"}
    status = {
        "models": {
            "fraud-scorer": {
                "state": "degraded",
                "recovering": {"to": "ok", "left_s": 3.2},
                "signals": {
                    "amount_drift": {"level": "ok", "thresholds": None, "readings": {"a": drift}},
                    "latency_p95": {
                        "level": "ok",
                        "thresholds": {"degraded": 250.0},
                        "readings": {"x": {"statistic": 41.234, "threshold": 250.0}},
                    },
                },
            },
        },
        "actions": {"recent": [], "alerts": []},
    }
    demo.events.append((12.5, "detected: fraud-scorer ok -> degraded", "red"))
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(demo.render(status))
    text = console.export_text()
    assert "recovering -> ok in 3s" in text
    assert "amount_drift: 0.0000123 / 0.125 ok" in text
    assert "latency_p95: 41.2 / 250 ok" in text
    assert not re.search(r"\de[+-]\d", text), "scientific notation in the view"
    # The event log is a panel below the table, not lines above it.
    assert text.index("models") < text.index("event log") < text.index("detected: fraud")
    assert "fraud-scorer/feature_drift" in text and "at 6s" in text  # the script's progress


async def test_the_working_directory_is_removed_also_when_the_run_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Path] = []

    async def broken(self: Demo, workdir: Path) -> int:
        seen.append(workdir)
        (workdir / "audit.jsonl").write_text("{}\n")
        raise RuntimeError("boom")

    monkeypatch.setattr(Demo, "_run", broken)
    demo = Demo(DemoOptions(handle_signals=False), console=Console(file=io.StringIO()))
    with pytest.raises(RuntimeError, match="boom"):
        await demo.run()
    [workdir] = seen
    assert workdir.name.startswith("driftwarden-demo-") and not workdir.exists()


async def test_keep_workdir_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    async def quick(self: Demo, workdir: Path) -> int:
        return 0

    monkeypatch.setattr(Demo, "_run", quick)
    demo = Demo(
        DemoOptions(handle_signals=False, keep_workdir=True), console=Console(file=io.StringIO())
    )
    result = await demo.run()
    assert result.workdir is not None and result.workdir.is_dir()
    result.workdir.rmdir()


def test_alert_log_lines_go_to_the_event_log_with_a_short_runbook_name() -> None:
    demo = Demo(DemoOptions(duration=90, ui=True, handle_signals=False))
    with demo._logs_into_event_log():
        logging.getLogger("alerts.console").info(
            "alert %s", "RESOLVED m/ModelUnhealthy value=error_rate=0.004: m recovered "
            "runbook=https://github.com/driftwarden/driftwarden/blob/main/docs/runbooks/ModelUnhealthy.md",
        )  # fmt: skip
    [(_, text, style)] = list(demo.events)
    assert text == (
        "RESOLVED m/ModelUnhealthy value=error_rate=0.004: m recovered (runbook ModelUnhealthy.md)"
    )
    assert style == "green"
