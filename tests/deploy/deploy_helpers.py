"""Helpers of the deployment checks: where the tools are (kustomize, checkov, promtool) and
the manifests of an overlay as kustomize renders them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.services.availability import missing

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "prod", "minimal")
#: The overlays for clusters with KEDA and the Prometheus Operator; `minimal` needs neither.
OPERATOR_OVERLAYS = ("dev", "prod")


def require_tool(path: str | None, what: str) -> str:
    """Under CI a missing tool fails the test; locally it skips it."""
    if path is not None:
        return path
    missing(f"{what} is not installed")


def kustomize_command() -> list[str] | None:
    """A real kustomize: ``$DRIFTWARDEN_KUSTOMIZE``, ``kustomize``, or ``kubectl kustomize``."""
    explicit = os.environ.get("DRIFTWARDEN_KUSTOMIZE")
    if explicit:
        return [explicit]
    if found := shutil.which("kustomize"):
        return [found]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    return None


def checkov_path() -> str | None:
    """``$DRIFTWARDEN_CHECKOV``, then CI's own venv, then ``checkov`` on PATH."""
    explicit = os.environ.get("DRIFTWARDEN_CHECKOV")
    if explicit:
        return explicit
    ci_venv = REPO / ".ci" / "venv-checkov" / "bin" / "checkov"
    if ci_venv.exists():
        return str(ci_venv)
    return shutil.which("checkov")


def promtool_path() -> str | None:
    return os.environ.get("DRIFTWARDEN_PROMTOOL") or shutil.which("promtool")


@dataclass(frozen=True, slots=True)
class Rendered:
    """One overlay's output: the YAML text kustomize printed and its documents."""

    overlay: str
    text: str
    docs: list[dict[str, Any]]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [
            d for d in self.docs if d["kind"] == kind and name in (None, d["metadata"]["name"])
        ]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name or ''}, got {found}"
        return found[0]

    def configmap(self, prefix: str) -> dict[str, Any]:
        """The generated ConfigMap whose name (before the content hash) is ``prefix``."""
        found = [
            d
            for d in self.docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix + "-")
        ]
        assert len(found) == 1, f"{self.overlay}: expected one ConfigMap {prefix}-<hash>"
        return found[0]


def render(overlay_dir: Path) -> str:
    command = kustomize_command()
    tool = require_tool(command[0] if command else None, "kustomize (or kubectl)")
    assert command is not None and tool
    done = subprocess.run(
        [*command, str(overlay_dir)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kustomize failed on {overlay_dir}:\n{done.stderr}"
    return done.stdout


SMALL_WINDOW = {"window": 50, "min_samples": 20, "stride": 10, "persist": 0}

#: A policy that exercises every metric: an error-rate incident on one model (transition,
#: flag flip, alert, review sampling) and the signal kinds the dashboard's panels select
#: (latency, error, engagement, a feature), with thresholds and with a detector's own.
EXPOSITION_POLICY: dict[str, Any] = {
    "default": {
        "mode": "enforce",
        "health": {"for": 0, "cooldown": 0, "recover_after": 600},
        "signals": [
            {
                "name": "error_rate",
                "source": "error",
                "detector": {**SMALL_WINDOW, "type": "rate_window"},
                "thresholds": {"degraded": 0.2},
            },
            {
                "name": "latency_p95",
                "source": "latency_ms",
                "detector": {**SMALL_WINDOW, "type": "quantile", "q": 0.95},
                "thresholds": {"degraded": 1000.0},
            },
            {
                "name": "feedback_rate",
                "source": "feedback",
                "detector": {**SMALL_WINDOW, "type": "rate_window"},
                "thresholds": {"warn": 0.05, "direction": "below"},
            },
            {
                "source": "feature",
                "feature": "amount",
                "detector": {**SMALL_WINDOW, "type": "ks_window", "reference": {"size": 50}},
            },
        ],
        "actions": {
            "degraded": {
                "flags": {"checkout-model": "fallback"},
                "alert": {"severity": "page"},
                "review": {"sample_rate": 1.0, "max_per_second": 1000},
            }
        },
    }
}
