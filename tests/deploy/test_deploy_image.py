"""The container image without a container runtime: deploy/Dockerfile's shape, its build
context (.dockerignore), and the deployed policy checked by the real `check-config`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.deploy_helpers import DEPLOY, K8S, OVERLAYS, REPO, Rendered

DOCKERFILE = DEPLOY / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|build-essential|apt-get|apk|cargo|rustc)\b")


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped) per stage."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        pending += stripped.removesuffix("\\").strip() + " "
        if not stripped.endswith("\\"):
            lines.append(pending.strip())
            pending = ""
    out: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def copied_paths() -> list[str]:
    """Build-context paths COPY'd in any stage (not those copied between stages)."""
    paths = []
    for stage in stages():
        for line in stage:
            words = line.split()
            if words[0] == "COPY" and not any(w.startswith("--from=") for w in words):
                paths += [w.rstrip("/") for w in words[1:-1]]
    return paths


def dockerignore_admits(path: str) -> bool:
    """Whether .dockerignore lets ``path`` into the build context (last match wins)."""
    admitted = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pattern[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if hit:
            admitted = negate
    return admitted


def test_final_stage_is_a_pinned_slim_python_with_a_numeric_non_root_user() -> None:
    all_stages = stages()
    assert len(all_stages) == 2
    bases = [stage[0].split()[1] for stage in all_stages]
    assert all(re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", b) for b in bases), bases
    assert len(set(bases)) == 1
    final = all_stages[-1]
    users = [line for line in final if line.startswith("USER ")]
    assert users == ["USER 10001:10001"]
    assert not any(BUILD_TOOLS.search(line) for line in final if line.startswith("RUN "))
    assert any(
        "pip uninstall -y pip setuptools wheel" in line for line in final if line.startswith("RUN")
    )
    copies = [line for line in final if line.startswith("COPY ")]
    assert "COPY --from=build /opt/driftwarden /opt/driftwarden" in copies
    assert any("PYTHONDONTWRITEBYTECODE=1" in line for line in final if line.startswith("ENV"))


def test_dockerignore_admits_what_the_dockerfile_copies_and_nothing_else() -> None:
    copied = copied_paths()
    assert set(copied) == {
        "pyproject.toml",
        "README.md",
        "monitor",
        "detectors",
        "alerts",
        "deploy/k8s/base/policy.yaml",
    }
    assert [p for p in copied if not dockerignore_admits(p)] == []
    for kept_out in (
        "tests",
        ".git",
        "bench/results",
        "deploy/k8s/overlays",
        "monitor/__pycache__",
    ):
        assert not dockerignore_admits(kept_out), kept_out


def entrypoint_and_cmd() -> list[str]:
    final = stages()[-1]
    entry = [json.loads(line.split(" ", 1)[1]) for line in final if line.startswith("ENTRYPOINT")]
    cmd = [json.loads(line.split(" ", 1)[1]) for line in final if line.startswith("CMD")]
    assert len(entry) == 1 and len(cmd) == 1
    return [*entry[0], *cmd[0]]


def test_image_command_runs_the_daemon_on_the_policy_the_image_ships() -> None:
    assert entrypoint_and_cmd() == [
        "driftwarden",
        "run",
        "--config",
        "/etc/driftwarden/policy.yaml",
    ]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["driftwarden"] == "monitor.cli.main:main"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployed_policy_passes_check_config_under_each_overlays_environment(
    rendered: dict[str, Rendered], overlay: str, tmp_path: Path
) -> None:
    # The real command (monitor.cli.main:main, as the console script runs it) on the deployed
    # file, under the environment the overlay's ConfigMap gives the pod: environment beats
    # the file, so a bad override there would stop the pod at start.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTWARDEN_")}
    env |= rendered[overlay].configmap("driftwarden-env")["data"]
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "check-config", str(K8S / "base" / "policy.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("ok (2 model policies)")


def test_check_config_rejects_a_broken_environment_override(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTWARDEN_")}
    env |= {"DRIFTWARDEN_KAFKA__SECURITY_PROTOCOL": "SASL_TLS", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "check-config", str(K8S / "base" / "policy.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.returncode == 2
    assert "security_protocol" in done.stdout
