"""The PrometheusRule as deployed: promtool accepts it, its unit tests pass, every alert has
a unit test, a severity, a summary and a runbook, and uses metrics the daemon exports.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_helpers import DEPLOY, REPO, Rendered
from tests.deploy.promql_names import Exposition

UNIT_TESTS = DEPLOY / "prometheus" / "driftwarden.rules.test.yaml"
RUNBOOKS = "https://github.com/driftwarden/driftwarden/blob/main/docs/runbooks/"
#: Metrics of other exporters the rules rely on.
EXTERNAL = frozenset({"kube_pod_status_ready", "up"})


@pytest.fixture
def rules_dir(rendered: dict[str, Rendered], tmp_path: Path) -> Path:
    """The prod overlay's PrometheusRule `spec` as a rule file, beside the unit tests."""
    spec = rendered["prod"].one("PrometheusRule")["spec"]
    (tmp_path / "driftwarden.rules.yaml").write_text(yaml.safe_dump(spec, width=1000))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    return tmp_path


def alert_rules(rendered: dict[str, Rendered]) -> list[dict[str, Any]]:
    spec = rendered["prod"].one("PrometheusRule")["spec"]
    return [rule for group in spec["groups"] for rule in group["rules"] if "alert" in rule]


def promtool_run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def test_rules_pass_promtool_check(promtool: str, rules_dir: Path) -> None:
    done = promtool_run(promtool, "check", "rules", "driftwarden.rules.yaml", cwd=rules_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 10 rules found" in done.stdout


def test_rules_pass_their_promtool_unit_tests(promtool: str, rules_dir: Path) -> None:
    done = promtool_run(promtool, "test", "rules", UNIT_TESTS.name, cwd=rules_dir)
    assert done.returncode == 0, done.stdout + done.stderr


def test_unit_tests_fail_when_a_rule_is_broken(promtool: str, rules_dir: Path) -> None:
    rule_file = rules_dir / "driftwarden.rules.yaml"
    text = rule_file.read_text()
    assert "> 0.01" in text
    rule_file.write_text(text.replace("> 0.01", "> 0.5"))
    done = promtool_run(promtool, "test", "rules", UNIT_TESTS.name, cwd=rules_dir)
    assert done.returncode != 0
    assert "DriftwardenDeadLetterRateHigh" in done.stdout + done.stderr


def test_every_alert_has_a_firing_unit_test(rendered: dict[str, Rendered]) -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {r["alert"] for r in alert_rules(rendered)} - fired == set()


def test_every_alert_has_severity_summary_and_an_existing_runbook(
    rendered: dict[str, Rendered],
) -> None:
    for rule in alert_rules(rendered):
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        url = rule["annotations"]["runbook_url"]
        assert url == f"{RUNBOOKS}{rule['alert']}.md"
        assert (REPO / "docs" / "runbooks" / f"{rule['alert']}.md").is_file(), url


def test_rules_use_only_metrics_the_daemon_exports(
    rendered: dict[str, Rendered], daemon_exposition: Exposition
) -> None:
    problems = [
        f"{rule['alert']}: {p}"
        for rule in alert_rules(rendered)
        for p in daemon_exposition.problems(rule["expr"], external=EXTERNAL)
    ]
    assert problems == []
