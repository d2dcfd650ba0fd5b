"""``driftwarden explain``: on a real file of events (text and JSON), on the shipped example
policy, without events, and on hostile input (the fuzz suite's generators)."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from monitor.cli.explain import MAX_BAD_SHOWN
from monitor.cli.main import main
from monitor.config.settings import load_settings
from monitor.engine.discovery import MAX_FEATURE_NAME_CHARS, ObservedSchema, coverage
from monitor.engine.events import EventDecoder
from monitor.tools.traffic import event_stream, make_event
from tests.fuzz.hostile import hostile_records

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "policy.yaml"

MINIMAL = "models:\n  default:\n    mode: shadow\n"


def write_events(path: Path, events: list[dict[str, Any]]) -> Path:
    lines = [json.dumps(e).encode() for e in events]
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def demo_events(n: int = 1200) -> list[dict[str, Any]]:
    """The demo's three models taking turns (``n / 3`` events each), with event times."""
    return list(event_stream(n, make_event, t0=1_700_000_000.0))


def explain(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["explain", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def explain_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = explain(capsys, *argv, "--json")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def by_model(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["model"]: entry for entry in doc["models"]}


def signals(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in entry["signals"]}


# -- a real file of events ----------------------------------------------------------------------


def test_explain_text_lists_each_models_discovered_signals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(MINIMAL)
    events = write_events(tmp_path / "events.jsonl.gz", demo_events())
    code, out, err = explain(capsys, "--config", str(policy), str(events))
    assert code == 0, err
    assert out.startswith(f"explained 1200 events from {events} (0 bad lines)\n")
    blocks = {block.split(" ", 1)[0]: block for block in out.split("\n\n")[1:]}
    assert list(blocks) == ["fraud-scorer", "search-ranker", "chat-assistant"]
    fraud = blocks["fraud-scorer"]
    assert fraud.startswith(
        "fraud-scorer (shadow, found in the events (default policy), 400 events)\n"
        "  signals discovered from its first 200 events\n"
    )
    rows = [line.split()[:3] for line in fraud.splitlines()[3:] if not line.startswith("      ")]
    assert rows[:-1] == [
        ["features", "discovered", "features"],
        ["categories", "discovered", "features"],
        ["missing", "discovered", "missing"],
        ["schema", "discovered", "schema"],
        ["prediction", "discovered", "prediction"],
        ["confidence", "discovered", "confidence"],
        ["latency_ms", "discovered", "latency_ms"],
        ["error", "discovered", "error"],
    ]
    # the numeric family, its detector, the level it raises, the model's `for`, the reason
    assert (
        "  features    discovered  features    30s*  ks_window min_shift=0.25 persist=0 window=1000"
        in fraud
    )
    assert "features (1) (one detector each): amount\n" in fraud
    assert "features (2) (one detector each): card_present, country\n" in fraud
    assert (
        "quantile max_ratio=1.5 persist=0 q=0.99 window=1000                 degraded on a breach"
        in fraud
    )
    assert "why: 1 numeric features in the first 200 events\n" in fraud
    # engagement only where feedback comes: chat-assistant's 0/1 feedback, a fall
    assert "engagement" not in fraud
    assert "rate_window alert_on=decrease" in blocks["chat-assistant"]


def test_explain_json_matches_coverage_of_the_first_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(MINIMAL)
    raw = demo_events()
    doc = explain_json(
        capsys, "--config", str(policy), str(write_events(tmp_path / "e.jsonl", raw))
    )
    assert doc["version"] == 1
    assert doc["events"] == {
        "source": str(tmp_path / "e.jsonl"),
        "lines": 1200,
        "events": 1200,
        "bad_lines": 0,
        "bad": [],
        "unexplained_events": 0,
        "bound": None,
        "read_error": None,
    }
    # The same as discovery itself gives on each model's first 200 events.
    settings = load_settings(policy)
    decode = EventDecoder(1 << 20).decode
    for model, entry in by_model(doc).items():
        schema = ObservedSchema()
        schema.observe([decode(json.dumps(e).encode()) for e in raw if e["model"] == model][:200])
        expected = coverage(settings.policy_for(model), schema)
        assert [s["name"] for s in entry["signals"]] == [c.name for c in expected]
        for got, want in zip(entry["signals"], expected, strict=True):
            assert got["detector"]["params"] == want.policy.detector_spec.model_dump(mode="json")
            assert (got["level"], got["origin"], got["reason"]) == (
                want.policy.level,
                "discovered",
                want.reason,
            )
            assert (got["for_s"], got["for_from"]) == (30.0, "health.for")
        assert (entry["events"], entry["discovery"], entry["observed_events"]) == (400, "done", 200)
        assert entry["beyond_max_features"] == []


POLICY_WITH_EVERYTHING = """\
models:
  default:
    mode: shadow
  fraud-scorer:
    mode: shadow
    health: {for: 10s}
    auto:
      enabled: true
      max_features: 2
      latency_slo_ms: 250
      ignore: [confidence, feature.country, feature.nope, categoriez]
    signals:
      - name: latency_ms
        source: latency_ms
        detector: {type: quantile, q: 0.95}
        level: degraded
        for: 1m
      - name: error_rate
        source: error
        thresholds: {degraded: 0.05, critical: 0.2}
"""


def test_explain_names_overridden_added_ignored_and_cut_signals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY_WITH_EVERYTHING)
    events = write_events(tmp_path / "e.jsonl", demo_events(900))
    doc = explain_json(capsys, "--config", str(policy), str(events))
    fraud = by_model(doc)["fraud-scorer"]
    found = signals(fraud)
    assert {name: s["origin"] for name, s in found.items()} == {
        "features": "discovered",
        "categories": "discovered",
        "missing": "discovered",
        "schema": "discovered",
        "prediction": "discovered",
        "latency_ms": "overridden",
        "latency_slo": "discovered",
        "error": "discovered",
        "error_rate": "named",
    }
    override = found["latency_ms"]
    assert override["detector"]["key_params"]["q"] == 0.95
    assert (override["level"], override["for_s"], override["for_from"]) == (
        "degraded",
        60,
        "signal",
    )
    assert override["reason"].startswith("named in the policy, over: latency_ms in 200/200 events")
    assert found["latency_slo"]["thresholds"] == {"degraded": 250.0, "direction": "above"}
    assert found["latency_slo"]["level_from"] == "thresholds"
    assert found["error_rate"]["thresholds"] == {
        "degraded": 0.05,
        "critical": 0.2,
        "direction": "above",
    }
    assert found["error"]["for_s"] == 10.0
    # country ignored: amount and card_present are the two features kept
    assert found["missing"]["features"] == ["amount", "card_present"]
    assert [s["name"] for s in fraud["ignored_signals"]] == ["confidence"]
    assert fraud["ignored_features"] == ["country"]
    assert fraud["ignore_unmatched"] == ["feature.nope", "categoriez"]
    assert fraud["beyond_max_features"] == []
    code, out, _ = explain(capsys, "--config", str(policy), str(events))
    assert code == 0
    assert "  ignored (auto.ignore): confidence: confidence in 200/200 events\n" in out
    assert "  ignored features (auto.ignore, 1): country\n" in out
    assert "  auto.ignore 'categoriez' matches no discovered signal or feature\n" in out
    assert re.search(r"\n  latency_ms +overridden +latency_ms +1m +quantile .*q=0\.95", out)


def test_explain_names_the_features_past_max_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("models:\n  default:\n    mode: shadow\n    auto: {max_features: 3}\n")
    # f0..f5 in every event, g0 in half of them: the most frequent first, then by name
    rows = [
        {"model": "wide", "features": {f"f{k}": float(i + k) for k in range(6)} | {"g0": 1.0}}
        if i % 2
        else {"model": "wide", "features": {f"f{k}": float(i + k) for k in range(6)}}
        for i in range(300)
    ]
    doc = explain_json(capsys, "--config", str(policy), str(write_events(tmp_path / "e", rows)))
    wide = by_model(doc)["wide"]
    assert signals(wide)["features"]["features"] == ["f0", "f1", "f2"]
    assert wide["beyond_max_features"] == ["f3", "f4", "f5", "g0"]
    code, out, _ = explain(capsys, "--config", str(policy), str(tmp_path / "e"))
    assert code == 0
    assert "  left out by auto.max_features=3 (4): f3, f4, f5, g0\n" in out


def test_a_model_with_fewer_events_than_discover_events_is_said_discovering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(MINIMAL)
    events = write_events(tmp_path / "e.jsonl", demo_events(150))
    doc = explain_json(capsys, "--config", str(policy), str(events))
    for entry in doc["models"]:
        assert (entry["discovery"], entry["observed_events"]) == ("discovering", 50)
        assert "features" in signals(entry)  # what the first 50 show so far
    code, out, _ = explain(capsys, "--config", str(policy), str(events))
    assert code == 0
    still = "  still discovering: 50 of the 200 events auto.discover_events asks for; "
    assert out.count(still + "what they show so far\n") == 3


def test_models_past_max_models_are_counted_and_named_ones_always_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(MINIMAL + "  m9:\n    mode: shadow\n")
    rows = [{"model": f"m{i % 10}", "latency_ms": 5.0} for i in range(100)]
    events = write_events(tmp_path / "e.jsonl", rows)
    doc = explain_json(capsys, "--config", str(policy), str(events), "--max-models", "2")
    assert [e["model"] for e in doc["models"]] == ["m9", "m0", "m1"]
    assert [e["events"] for e in doc["models"]] == [10, 10, 10]
    assert (doc["events"]["unexplained_events"], doc["events"]["bound"]) == (70, "--max-models 2")
    code, out, _ = explain(capsys, "--config", str(policy), str(events), "--max-models", "2")
    assert code == 0
    assert "\n70 events of further models not explained: --max-models 2 reached\n" in out


# -- without events, the example policy, exit codes -------------------------------------------


def test_without_events_only_the_named_signals_and_discovery_needs_events(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = explain(capsys, "--config", str(EXAMPLE))
    assert code == 0, err
    assert out.startswith(
        "no EVENTS given: the policy's named signals only; discovery needs events"
    )
    assert (
        "default (shadow, in the policy)\n  discovers its signals from its first 200 events: "
        "give EVENTS to see which; only the named ones below\n  (no signal)\n"
    ) in out
    doc = explain_json(capsys, "--config", str(EXAMPLE))
    models = by_model(doc)
    assert list(models) == ["default", "fraud-scorer", "recommender"]
    assert "events" not in doc
    assert models["default"]["discovery"] == "needs_events"
    assert models["fraud-scorer"]["discovery"] == "off"
    assert [s["origin"] for s in models["recommender"]["signals"]] == ["named", "named"]
    settings = load_settings(EXAMPLE)
    assert [s["name"] for s in models["fraud-scorer"]["signals"]] == [
        s.signal_name for s in settings.policy_for("fraud-scorer").signals
    ]


def test_the_example_policy_shows_the_minimal_form_and_name_override_silence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(3)
    rows = []
    for i in range(600):
        model = ("recommender", "new-model")[i % 2]
        rows.append(
            {
                "model": model,
                "latency_ms": rng.uniform(5, 50),
                "confidence": rng.random(),
                "features": {
                    "basket_value": rng.gauss(50, 10),
                    "items": rng.randint(1, 9),
                    "session_id": f"s-{i}",
                },
            }
        )
    doc = explain_json(capsys, "--config", str(EXAMPLE), str(write_events(tmp_path / "e", rows)))
    models = by_model(doc)
    # the minimal form: an unlisted model watches what its events carry
    new = models["new-model"]
    assert not new["in_policy"]
    assert {s["origin"] for s in new["signals"]} == {"discovered"}
    assert signals(new)["categories"]["features"] == ["session_id"]
    # named on top of discovery: one overridden, one added, two silenced
    rec = models["recommender"]
    origins = {s["name"]: s["origin"] for s in rec["signals"]}
    assert origins["latency_ms"] == "overridden"
    assert origins["basket_shape"] == "named"
    assert origins["latency_slo"] == "discovered"
    assert "confidence" not in origins and "categories" not in origins
    assert [s["name"] for s in rec["ignored_signals"]] == ["confidence"]
    assert rec["ignored_features"] == ["session_id"]
    assert rec["ignore_unmatched"] == []
    # every signal named by hand: no discovery
    assert models["fraud-scorer"]["discovery"] == "off"


def test_the_example_policy_documents_every_auto_field() -> None:
    from monitor.config.policy import (
        AutoCoverage,
        AutoLevels,
        ModelPolicy,
        OutcomePolicy,
        SignalPolicy,
    )

    text = EXAMPLE.read_text()
    settings = load_settings(EXAMPLE)
    assert settings.policy_for("default").discovers
    assert settings.models["default"].auto == AutoCoverage(), "the example's auto is the default"
    assert settings.models["default"].outcomes == OutcomePolicy(), "and its outcomes too"
    keys = {line.split(":")[0].strip().lstrip("#- ").strip() for line in text.splitlines()}
    for model in (ModelPolicy, SignalPolicy, AutoCoverage, AutoLevels, OutcomePolicy):
        fields = [info.alias or name for name, info in model.model_fields.items()]
        assert [f for f in fields if f not in keys] == [], model.__name__


def test_a_bad_config_exits_2_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("models:\n  m:\n    auto: {max_features: -1, ignroe: []}\n")
    code, out, err = explain(capsys, "--config", str(broken), str(tmp_path / "none"))
    assert (code, out) == (2, "")
    assert f"{broken}:3: models.m.auto.max_features" in err
    assert "models.m.auto.ignroe: unknown field" in err
    code, out, err = explain(capsys, "--config", str(tmp_path / "absent.yaml"))
    assert (code, out) == (2, "")
    assert "cannot read the file" in err


def test_unreadable_events_exit_1_and_a_truncated_gzip_explains_what_was_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(MINIMAL)
    code, out, err = explain(capsys, "--config", str(policy), str(tmp_path / "absent.jsonl"))
    assert (code, out) == (1, "")
    assert f"driftwarden explain: cannot read {tmp_path / 'absent.jsonl'}: " in err
    code, _, err = explain(capsys, "--config", str(policy), str(tmp_path))
    assert code == 1 and "cannot read" in err
    whole = gzip.compress(b"".join(json.dumps(e).encode() + b"\n" for e in demo_events(3000)))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    code, out, err = explain(capsys, "--config", str(policy), str(cut), "--json")
    assert code == 1
    doc = json.loads(out)
    assert 600 < doc["events"]["events"] < 3000
    assert doc["events"]["read_error"]
    assert [e["discovery"] for e in doc["models"]] == ["done"] * 3
    assert "reading stopped early" in err


# -- hostile input ------------------------------------------------------------------------------


def hostile_file(path: Path, count: int, seed: int) -> Path:
    values = [r.value if r.value is not None else b"" for r in hostile_records(count, seed)]
    path.write_bytes(b"\n".join(values) + b"\n")
    return path


@pytest.mark.parametrize("seed", range(4))
def test_hostile_events_print_what_they_can_and_name_each_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(MINIMAL)
    events = hostile_file(tmp_path / "hostile.jsonl", 400, seed)
    doc = explain_json(capsys, "--config", str(policy), str(events))
    read = doc["events"]
    assert read["read_error"] is None
    assert read["events"] + read["bad_lines"] == read["lines"] >= 400
    assert read["events"] > 0 and read["bad_lines"] > 0
    assert len(read["bad"]) == read["bad_lines"]
    assert all(b["reason"] and isinstance(b["line"], int) for b in read["bad"])
    assert sum(e["events"] for e in doc["models"]) == read["events"]
    code, out, err = explain(capsys, "--config", str(policy), str(events))
    assert (code, err) == (0, "")
    # Nothing reaches the terminal unescaped: no control character, no bidi override.
    assert all(c.isprintable() or c == "\n" for c in out)
    shown = min(read["bad_lines"], MAX_BAD_SHOWN)
    assert out.count("\n  line ") == shown
    first = read["bad"][0]
    assert f"\n  line {first['line']}: {first['reason']}: " in out


def test_hostile_bytes_through_the_real_command_never_a_traceback(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(MINIMAL)
    events = tmp_path / "noise.bin"
    rng = random.Random(7)
    events.write_bytes(
        hostile_file(tmp_path / "h.jsonl", 300, 11).read_bytes() + rng.randbytes(200_000)
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for extra in ([], ["--json"]):
        proc = subprocess.run(
            [sys.executable, "-m", "monitor", "explain", "-c", str(policy), str(events), *extra],
            capture_output=True,
            timeout=120,
            env=env,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert b"Traceback" not in proc.stderr + proc.stdout
    json.loads(proc.stdout)


def test_hostile_names_are_escaped_and_cut_in_the_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(MINIMAL)
    names = ["esc\x1b[2J", "bidi\u202eevil", "new\nline", "tab\there", "long" + "x" * 5000]
    rows = [{"model": "m", "features": {n: float(i) for n in names}} for i in range(10)]
    events = write_events(tmp_path / "e.jsonl", rows)
    code, out, _ = explain(capsys, "--config", str(policy), str(events))
    assert code == 0
    assert all(c.isprintable() or c == "\n" for c in out)
    assert "esc\\x1b[2J" in out and "bidi\\u202eevil" in out and "new\\nline" in out
    assert max(len(line) for line in out.splitlines()) < 1000
    # --json keeps each name whole: a machine reads it
    doc = explain_json(capsys, "--config", str(policy), str(events))
    tracked = [n for n in names if len(n) <= MAX_FEATURE_NAME_CHARS]  # longer: not tracked
    assert signals(by_model(doc)["m"])["features"]["features"] == sorted(tracked)
