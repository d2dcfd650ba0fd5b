"""Runbooks: one page per alert (the daemon's and the PrometheusRule's), each with the four
sections on-call needs, and every runbook link in the deployed policy points at one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.deploy.deploy_helpers import REPO, Rendered

RUNBOOKS = REPO / "docs" / "runbooks"
URL_PREFIX = "https://github.com/driftwarden/driftwarden/blob/main/docs/runbooks/"
#: alertname values the daemon sends to its sinks.
DAEMON_ALERTS = (
    "ModelUnhealthy",
    "FlagBackendDown",
    "AlertSinkDown",
)
#: The daemon's alerts about itself, each linked to its own runbook page.
SELF_ALERTS = ("FlagBackendDown", "AlertSinkDown")
SECTIONS = (
    "## What it means",
    "## How to confirm",
    "## How to mitigate",
    "## How to release an override",
)


def rule_alerts(rendered: dict[str, Rendered]) -> list[str]:
    spec = rendered["prod"].one("PrometheusRule")["spec"]
    return [r["alert"] for g in spec["groups"] for r in g["rules"] if "alert" in r]


@pytest.mark.parametrize("alertname", DAEMON_ALERTS)
def test_each_daemon_alert_has_a_runbook_with_the_four_sections(alertname: str) -> None:
    text = (RUNBOOKS / f"{alertname}.md").read_text()
    assert text.startswith(f"# {alertname}\n")
    positions = [text.find(s) for s in SECTIONS]
    assert -1 not in positions and positions == sorted(positions), positions


def test_each_prometheus_alert_has_a_runbook_with_the_four_sections(
    rendered: dict[str, Rendered],
) -> None:
    for alertname in rule_alerts(rendered):
        text = (RUNBOOKS / f"{alertname}.md").read_text()
        assert text.startswith(f"# {alertname}\n")
        assert all(s in text for s in SECTIONS), alertname


def test_index_lists_every_runbook_and_nothing_else(rendered: dict[str, Rendered]) -> None:
    index = (RUNBOOKS / "README.md").read_text()
    listed = set(re.findall(r"\]\(([A-Za-z]+)\.md\)", index))
    pages = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert listed == pages == set(DAEMON_ALERTS) | set(rule_alerts(rendered))


def test_relative_links_in_runbooks_resolve() -> None:
    for page in RUNBOOKS.glob("*.md"):
        for target in re.findall(r"\]\((?!https?://)([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def runbook_urls(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("runbook_url", "self_runbook_url") and isinstance(value, str) and value:
                yield value
            elif key == "self_runbook_base_url" and isinstance(value, str) and value:
                yield from (f"{value.rstrip('/')}/{name}.md" for name in SELF_ALERTS)
            else:
                yield from runbook_urls(value)
    elif isinstance(node, list):
        for item in node:
            yield from runbook_urls(item)


def test_every_runbook_url_in_the_deployed_policy_exists(policy_text: str) -> None:
    urls = list(runbook_urls(yaml.safe_load(policy_text)))
    assert urls, "the deployed policy names no runbook"
    for url in urls:
        assert url.startswith(URL_PREFIX), url
        assert (RUNBOOKS / url.removeprefix(URL_PREFIX)).is_file(), url


def test_each_self_alert_of_the_deployed_policy_links_its_own_runbook() -> None:
    from monitor.actions.actions import ALERT_SINK_DOWN, FLAG_BACKEND_DOWN, Actions
    from monitor.config.settings import load_settings
    from monitor.observability.metrics import Metrics

    assert {FLAG_BACKEND_DOWN, ALERT_SINK_DOWN} == set(SELF_ALERTS)
    actions = Actions.from_settings(
        load_settings(REPO / "deploy" / "k8s" / "base" / "policy.yaml"),
        Metrics.create(CollectorRegistry()),
    )
    urls = {name: actions.self_runbook(name) for name in SELF_ALERTS}
    assert urls == {name: f"{URL_PREFIX}{name}.md" for name in SELF_ALERTS}
    for url in urls.values():
        assert (RUNBOOKS / url.removeprefix(URL_PREFIX)).is_file(), url
