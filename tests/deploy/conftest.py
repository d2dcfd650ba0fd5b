"""Fixtures of the deployment checks: each overlay rendered once per session, promtool, the
deployed policy file, and the metrics the daemon exports.
"""

from __future__ import annotations

from dataclasses import fields

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from monitor.metrics import Metrics
from tests.deploy.deploy_helpers import (
    K8S,
    OVERLAYS,
    Rendered,
    promtool_path,
    render,
    require_tool,
)
from tests.deploy.promql_names import Exposition, parse_exposition


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


@pytest.fixture(scope="session")
def daemon_exposition() -> Exposition:
    """What the daemon's /metrics offers: the exposition of ``Metrics.create()`` with one
    child of every labelled metric, so each metric shows its label names.
    """
    metrics = Metrics.create(CollectorRegistry())
    for f in fields(metrics):
        metric = getattr(metrics, f.name)
        # prometheus_client keeps a metric's label names in `_labelnames` (no public API).
        labelnames = getattr(metric, "_labelnames", ())
        if isinstance(metric, MetricWrapperBase) and labelnames:
            metric.labels(*("x" for _ in labelnames))
    return parse_exposition(generate_latest(metrics.registry).decode())
