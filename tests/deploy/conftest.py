"""Fixtures of the deployment checks: each overlay rendered once per session, promtool, and
the deployed policy file.
"""

from __future__ import annotations

import pytest
import yaml

from tests.deploy.deploy_helpers import (
    K8S,
    OVERLAYS,
    Rendered,
    promtool_path,
    render,
    require_tool,
)


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    out = {}
    for overlay in OVERLAYS:
        text = render(K8S / "overlays" / overlay)
        docs = [d for d in yaml.safe_load_all(text) if d]
        out[overlay] = Rendered(overlay, text, docs)
    return out


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool(promtool_path(), "promtool (Debian package prometheus)")


@pytest.fixture(scope="session")
def policy_text() -> str:
    return (K8S / "base" / "policy.yaml").read_text(encoding="utf-8")
