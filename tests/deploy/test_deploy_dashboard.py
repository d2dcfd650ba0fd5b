"""The Grafana dashboard: every query uses metrics and labels the daemon really exports, is
valid PromQL, and the panels cover what on-call and product people look at.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_helpers import DEPLOY
from tests.deploy.promql_names import Exposition, references, substitute_grafana_variables

DASHBOARD = DEPLOY / "grafana" / "driftwarden.json"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expression) for every panel target, variable and annotation query."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            yield f"variable {var['name']}", var["query"]["query"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"]


def test_every_query_uses_metrics_and_labels_the_daemon_exports(
    dashboard: dict[str, Any], daemon_exposition: Exposition
) -> None:
    found = list(queries(dashboard))
    assert len(found) > 30
    problems = [f"{where}: {p}" for where, expr in found for p in daemon_exposition.problems(expr)]
    assert problems == []


def test_the_query_check_catches_a_wrong_metric_or_label(daemon_exposition: Exposition) -> None:
    assert daemon_exposition.problems('driftwarden_model_health_level{model="a"}') == []
    assert daemon_exposition.problems("driftwarden_consumer_lag") == [
        "driftwarden_consumer_lag: not exported"
    ]
    assert daemon_exposition.problems('driftwarden_signal_value{modle="a"}') == [
        "driftwarden_signal_value: no label ['modle']"
    ]
    assert daemon_exposition.problems("sum by (sink) (driftwarden_flag_backend_up)") == [
        "grouping by labels no metric has: ['sink']"
    ]


def test_every_query_is_valid_promql(
    dashboard: dict[str, Any], promtool: str, tmp_path: Path
) -> None:
    # promtool parses each expression as a recording rule; Grafana's variables get values.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute_grafana_variables(expr)}
        for i, (_, expr) in enumerate(queries(dashboard))
        if not expr.startswith("label_values(")
    ]
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_panels_cover_health_drift_serving_actions_and_pipeline(
    dashboard: dict[str, Any],
) -> None:
    used: set[str] = set()
    for _, expr in queries(dashboard):
        used |= set(references(expr).metrics)
    required = {
        "driftwarden_model_health_level",  # per-model health state
        "driftwarden_signal_value",  # drift statistics, latency, error and engagement rates
        "driftwarden_signal_threshold",
        "driftwarden_signal_effect_size",
        "driftwarden_batch_duration_seconds_bucket",  # latency quantiles of the daemon
        "driftwarden_actions_total",  # actions taken
        "driftwarden_flag_writes_total",
        "driftwarden_alert_deliveries_total",
        "driftwarden_consumer_lag_records",  # consumer lag
        "driftwarden_dead_lettered_total",  # DLQ rate
    }
    assert required - used == set()
    titles = {p["title"] for p in panels(dashboard)}
    for title in ("Inference latency (latency signals)", "Error rate", "Engagement rate"):
        assert title in titles


def test_panels_have_unique_ids_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    all_panels = list(panels(dashboard))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], int] = {}
    for p in all_panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["description"], p["title"]


def test_dashboard_is_shipped_to_grafanas_sidecar(dashboard: dict[str, Any]) -> None:
    kustomization = yaml.safe_load((DEPLOY / "grafana" / "kustomization.yaml").read_text())
    generator = kustomization["configMapGenerator"][0]
    assert generator["files"] == ["driftwarden.json"]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}
    assert dashboard["uid"] == "driftwarden"
