"""Every example file loads with the real settings loader, documents what it says it does,
starts in shadow, and names each flag under the model it belongs to."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from monitor.config.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))
POLICY = ROOT / "examples" / "policy.yaml"


def test_there_are_examples() -> None:
    assert POLICY in EXAMPLES
    assert ROOT / "examples" / "events" / "policy.yaml" in EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_loads_with_the_settings_loader(path: Path) -> None:
    settings = load_settings(path)
    assert settings.models


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_starts_every_model_in_shadow(path: Path) -> None:
    settings = load_settings(path)
    for model in settings.models:
        assert settings.policy_for(model).mode == "shadow", f"{path}: {model}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_names_a_models_flags_under_that_model(path: Path) -> None:
    # A flag under `default` is flipped by every model's incident: one named after a model
    # belongs under that model.
    settings = load_settings(path)
    named = [m for m in settings.models if m != "default"]
    for model, policy in settings.models.items():
        for actions in policy.actions.values():
            for flag in actions.flags:
                owners = [m for m in named if flag.startswith(m)]
                assert owners in ([], [model]), f"{path}: {model} sets {flag}"


def _fields(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _section_types(annotation: object) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    stack = [annotation]
    while stack:
        item = stack.pop()
        if isinstance(item, type) and issubclass(item, BaseModel):
            found.append(item)
        else:
            stack.extend(typing.get_args(item))
    return found


def test_policy_example_documents_every_section_and_field() -> None:
    text = POLICY.read_text()
    keys = set(re.findall(r"^\s*#?\s*-?\s*([a-z_]+):", text, re.MULTILINE))
    sections = set(re.findall(r"^([a-z_]+):", text, re.MULTILINE))
    assert sections == set(Settings.model_fields), "every section, set (not commented out)"
    missing = []
    for section, info in Settings.model_fields.items():
        if section == "models":
            continue
        for spec in _section_types(info.annotation):
            missing += [f"{section}.{f}" for f in _fields(spec) if f not in keys]
    assert missing == []


def test_policy_example_turns_the_audit_log_on_where_the_default_puts_it() -> None:
    settings = load_settings(POLICY)
    assert settings.actions.audit_log == Settings().actions.audit_log
    assert settings.actions.audit_log == "var/driftwarden/audit.jsonl"
