"""check-config and settings loading: precise errors, env overrides, refusal to start."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from monitor.cli.main import main
from monitor.config.settings import load_settings
from monitor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "policy.yaml"

BROKEN = """\
kafka:
  max_poll_records: lots
  topcs: [a]
http:
  port: 99999
models:
  default:
    health: {for: soon}
  fraud:
    signals:
      - source: error
        thresholds: {warn: high}
      - source: feature
      - source: latency_ms
        detector: {type: quantile, window: 10, min_samples: 50}
      - source: confidence
        detector: {type: psi}
      - source: error
        detector: {type: nope}
      - source: error
        thresholds: {warn: 0.5, degraded: 0.1}
"""

# (line in BROKEN, field path and message)
EXPECTED_PATHS = [
    "2: kafka.max_poll_records: Input should be a valid integer",
    "3: kafka.topcs: unknown field",
    "5: http.port: Input should be less than or equal to 65535",
    "8: models.default.health.for: expected a duration",
    "12: models.fraud.signals[0].thresholds.warn: Input should be a valid number",
    "13: models.fraud.signals[1]: source 'feature' needs 'feature: <name>'",
    "15: models.fraud.signals[2].detector: window must be larger than min_samples",
    "16: models.fraud.signals[3]: detector 'psi' reads categorical values",
    "19: models.fraud.signals[4].detector: Input tag 'nope'",
    "21: models.fraud.signals[5].thresholds: thresholds must increase from warn to critical",
]


def test_example_policy_is_valid() -> None:
    settings = load_settings(EXAMPLE)
    # the README's advice: start in shadow, read the audit log, then enforce
    assert settings.policy_for("fraud-scorer").mode == "shadow"
    # an unlisted model gets the default policy
    assert settings.policy_for("unknown-model").mode == "shadow"


def test_listed_model_inherits_unset_keys_from_default() -> None:
    settings = load_settings(EXAMPLE)
    fraud = settings.policy_for("fraud-scorer")
    assert fraud.health == settings.policy_for("default").health
    assert fraud.runbook_url == settings.policy_for("default").runbook_url
    assert next(s.signal_name for s in fraud.signals) == "error_rate"


def test_check_config_names_file_and_field_path_of_each_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    assert main(["check-config", str(broken)]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(EXPECTED_PATHS)
    for line, expected in zip(lines, EXPECTED_PATHS, strict=True):
        assert line.startswith(f"{broken}:{expected}"), line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kafka: [1, 2", "line 1, column 13: not valid YAML: expected ',' or ']'"),
        ("- just\n- a list\n", "<root>: expected a mapping of sections, got list"),
        (
            "models:\n  default:\n    mode: loud\n",
            ":3: models.default.mode: Input should be 'enforce' or 'shadow'",
        ),
        (
            "models:\n  default:\n    signals:\n      - {source: bogus}\n",
            ":4: models.default.signals[0].source: Input should be",
        ),
    ],
)
def test_check_config_reports_structural_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    out = capsys.readouterr().out
    assert f"{path}{expected}" in out or f"{path}: {expected}" in out, out


def test_check_config_exits_zero_on_valid_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert "ok" in capsys.readouterr().out


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_settings(tmp_path / "nope.yaml")


def test_environment_overrides_file_scalars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS", "kafka-0:9093")
    monkeypatch.setenv("DRIFTWARDEN_HTTP__PORT", "9100")
    monkeypatch.setenv("DRIFTWARDEN_LIFECYCLE__GRACE_PERIOD_S", "7.5")
    settings = load_settings(EXAMPLE)
    assert settings.kafka.bootstrap_servers == "kafka-0:9093"
    assert settings.http.port == 9100
    assert settings.lifecycle.grace_period_s == 7.5
    # untouched file values survive a partial override of the same section
    assert settings.kafka.group_id == "driftwarden"


def test_sasl_password_comes_from_environment_and_is_never_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DRIFTWARDEN_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("DRIFTWARDEN_KAFKA__SASL_PLAIN_USERNAME", "dw")
    monkeypatch.setenv("DRIFTWARDEN_KAFKA__SASL_PLAIN_PASSWORD", "hunter2")
    settings = load_settings(EXAMPLE)
    assert settings.kafka.client_options()["sasl_plain_password"] == "hunter2"
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in settings.model_dump_json()


def test_run_refuses_to_start_on_invalid_config(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    proc = subprocess.run(
        [sys.executable, "-m", "monitor", "run", "--config", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "models.fraud.signals[1]" in proc.stderr
    assert "refusing to start" in proc.stderr


def test_version_flag_prints_version(capsys: pytest.CaptureFixture[str]) -> None:
    from monitor import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_global_shadow_switch_overrides_every_model_policy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    enforcing = tmp_path / "enforce.yaml"
    config = yaml.safe_load(EXAMPLE.read_text())
    config["models"]["fraud-scorer"]["mode"] = "enforce"
    enforcing.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DRIFTWARDEN_ACTIONS__SHADOW", "true")
    settings = load_settings(enforcing)
    assert settings.policy_for("fraud-scorer").mode == "shadow"
    assert settings.models["fraud-scorer"].mode == "enforce"


@pytest.mark.parametrize(
    ("kafka", "expected"),
    [
        (
            {"topic_pattern": "events-(["},
            "kafka.topic_pattern: 'events-([' is not a valid regular expression",
        ),
        (
            {"topic_pattern": "loop-.*", "topics": [], "dead_letter_topic": "loop-dlq"},
            "<root>: kafka.topic_pattern would consume kafka.dead_letter_topic 'loop-dlq'",
        ),
        (
            {"topics": ["events", "driftwarden-review"]},
            "<root>: kafka.topics would consume kafka.review_topic 'driftwarden-review'",
        ),
    ],
)
def test_subscription_errors_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kafka: dict[str, object], expected: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"kafka": kafka}))
    assert main(["check-config", str(path)]) == 2
    # a field's error carries its line; a whole-file error (<root>) has none
    assert re.search(
        rf"{re.escape(str(path))}(:\d+)?: {re.escape(expected)}", capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # an unknown key, at every depth and through tagged unions
        ("kafka:\n  bootstrap_server: x\n", ":2: kafka.bootstrap_server: unknown field"),
        ("htp:\n  port: 1\n", ":1: htp: unknown field"),
        (
            "models:\n  fraud:\n    signals:\n      - source: error\n        tresholds: {warn: 1}\n",
            ":5: models.fraud.signals[0].tresholds: unknown field",
        ),
        (
            "models:\n  fraud:\n    signals:\n      - source: error\n"
            "        detector: {type: rate_window, windw: 3}\n",
            ":5: models.fraud.signals[0].detector.windw: unknown field",
        ),
        (
            "alerts:\n  sinks:\n    - {type: slack, webhook_url_envv: X}\n",
            ":3: alerts.sinks[0].webhook_url_envv: unknown field",
        ),
        ("models:\n  default:\n    health: {fro: 5s}\n", ":3: models.default.health.fro"),
    ],
)
def test_unknown_key_gets_did_you_mean_and_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"{path}{expected}"), line
    assert "; did you mean '" in line, line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "models:\n  default:\n    actions:\n      degradd: {alert: {severity: page}}\n",
            ":4: models.default.actions.degradd: 'degradd' is not a valid key: "
            "Input should be 'warn', 'degraded' or 'critical'; did you mean 'degraded'?",
        ),
        (
            "models:\n  default:\n    mode: shadw\n",
            ":3: models.default.mode: Input should be 'enforce' or 'shadow' (got 'shadw'); "
            "did you mean 'shadow'?",
        ),
        (
            "models:\n  m:\n    signals:\n      - {source: latency, detector: {type: quantile}}\n",
            ":4: models.m.signals[0].source: Input should be 'prediction'",
        ),
        (
            "flags: {type: flagd_fil, path: x}\n",
            ":1: flags: Input tag 'flagd_fil' found using 'type'",
        ),
    ],
)
def test_bad_choice_names_the_closest_valid_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"{path}{expected}"), line
    assert "[key]" not in line
    assert "did you mean '" in line, line


def test_far_off_key_gets_no_suggestion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("kafka:\n  zzzzqqq: 1\n")
    assert main(["check-config", str(path)]) == 2
    out = capsys.readouterr().out
    assert f"{path}:2: kafka.zzzzqqq: unknown field" in out
    assert "did you mean" not in out


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DRIFTWARDEN_HTTP__PORT", "99999", "http.port: Input should be less than or equal"),
        ("DRIFTWARDEN_KAFKA__MAX_POLL_RECORDS", "lots", "kafka.max_poll_records: Input should"),
        ("DRIFTWARDEN_HTTP__PORTT", "9000", "http.portt: unknown field"),
        ("driftwarden_lifecycle__log_level", "LOUD", "lifecycle.log_level: Input should be"),
    ],
)
def test_error_from_the_environment_names_the_variable_not_the_file(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    expected: str,
) -> None:
    # http.port and kafka.max_poll_records are also set in the file: the variable wins,
    # so it is the variable that is wrong.
    monkeypatch.setenv(variable, value)
    assert main(["check-config", str(EXAMPLE)]) == 2
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"environment {variable}: {expected}"), line
    assert str(EXAMPLE) not in line


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "{}\n"])
def test_empty_file_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    assert f"{path}: <root>: the file is empty" in capsys.readouterr().out


def test_line_numbers_follow_anchors_and_flow_style(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "base: &timing {for: 5s, cooldown: 1m}\n"
        "models:\n"
        "  a: {health: *timing}\n"
        "  b:\n"
        "    health:\n"
        "      <<: *timing\n"
        "      recover_after: never\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert any(p.startswith(f"{path}:1: base: unknown field") for p in info.value.problems)
    assert any(
        p.startswith(f"{path}:7: models.b.health.recover_after: expected a duration")
        for p in info.value.problems
    ), info.value.problems


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"kafka:\n  group_id: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_settings(path)
