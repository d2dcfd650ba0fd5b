"""Every runbook link shipped with driftwarden (policies in examples/, deploy/, the demo's
embedded policy and its run-time config, the policy model's default, alert rules) names a page
that exists under docs/runbooks/."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config.policy import ModelPolicy
from monitor.tools.demo import demo_config

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks"
URL_PREFIX = "https://github.com/driftwarden/driftwarden/blob/main/docs/runbooks/"
SHIPPED_DIRS = ("examples", "deploy", "monitor/tools")
#: A runbook page named in any string, e.g. inside a ConfigMap literal or a description.
PAGE_IN_TEXT = re.compile(r"docs/runbooks/([A-Za-z0-9_.-]+\.md)")


def runbook_links(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(path to the field, URL) of each ``*runbook_url`` value in a parsed document."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if str(key).endswith("runbook_url"):
                yield path, value
            else:
                yield from runbook_links(value, path)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from runbook_links(item, f"{where}[{index}]")


def problems_of(links: list[tuple[str, str]]) -> list[str]:
    """What is wrong with each link: not a string, outside docs/runbooks/, or no such page."""
    found = []
    for where, url in links:
        if not isinstance(url, str) or not url:
            found.append(f"{where}: empty or not a string ({url!r})")
        elif not url.startswith(URL_PREFIX):
            found.append(f"{where}: {url} is not a page under {URL_PREFIX}")
        elif not (RUNBOOKS / url.removeprefix(URL_PREFIX)).is_file():
            found.append(f"{where}: {url} names docs/runbooks/{url.removeprefix(URL_PREFIX)}, "
                         "which does not exist")  # fmt: skip
    return found


def shipped_files() -> list[Path]:
    files = []
    for folder in SHIPPED_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
                files.append(path)
    return files


def links_in_file(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8")
    name = str(path.relative_to(ROOT))
    documents = [json.loads(text)] if path.suffix == ".json" else list(yaml.safe_load_all(text))
    links = []
    for number, document in enumerate(documents):
        prefix = f"{name}[doc {number}]" if len(documents) > 1 else name
        links += [(f"{prefix}: {where}", url) for where, url in runbook_links(document)]
    return links


def test_the_walk_finds_the_links_of_each_kind_of_shipped_file() -> None:
    by_file = {str(p.relative_to(ROOT)): links_in_file(p) for p in shipped_files()}
    for expected in (
        "examples/policy.yaml",
        "deploy/k8s/base/policy.yaml",
        "deploy/k8s/base/prometheusrule.yaml",
        "deploy/prometheus/driftwarden.rules.test.yaml",
        "monitor/tools/demo_policy.yaml",
    ):
        assert by_file.get(expected), f"no runbook link found in {expected}"


@pytest.mark.parametrize("path", shipped_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_runbook_link_in_a_shipped_file_names_an_existing_page(path: Path) -> None:
    assert problems_of(links_in_file(path)) == []
    # A page named in free text (a comment, a ConfigMap literal) must exist too.
    text = path.read_text(encoding="utf-8")
    missing = [page for page in PAGE_IN_TEXT.findall(text) if not (RUNBOOKS / page).is_file()]
    assert missing == [], f"{path.relative_to(ROOT)} names missing runbooks {missing}"


def test_the_default_runbook_and_the_demo_run_time_config_name_existing_pages(
    tmp_path: Path,
) -> None:
    config = demo_config("127.0.0.1:1", http_port=0, flags_file=tmp_path / "flags.json")
    links = [("ModelPolicy.runbook_url", ModelPolicy().runbook_url), *runbook_links(config)]
    assert any(where == "alerts.self_runbook_url" for where, _ in links)
    assert problems_of(links) == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://github.com/driftwarden/driftwarden/blob/main/docs/runbooks/Nope.md", "exist"),
        ("https://runbooks.example.com/driftwarden/ModelUnhealthy", "is not a page under"),
        ("", "empty"),
        (None, "not a string"),
    ],
)
def test_a_bad_link_is_reported_with_where_it_is(url: Any, why: str) -> None:
    document = {"models": {"m": {"runbook_url": url}}}
    [problem] = problems_of(list(runbook_links(document)))
    assert problem.startswith("models.m.runbook_url: ") and why in problem
