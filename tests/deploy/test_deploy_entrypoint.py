"""The image's entrypoint run from a fresh virtualenv: the project built and installed from
exactly the paths deploy/Dockerfile copies, then `driftwarden --version` and `check-config`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from tests.deploy.deploy_helpers import K8S, OVERLAYS, REPO, Rendered, require_tool
from tests.deploy.test_deploy_image import copied_paths, entrypoint_and_cmd


def installed_version(package: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in version(package).split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return (0,)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new virtualenv with the project installed from a copy of the image's build context.

    System site-packages supply the dependencies, so nothing is downloaded; the project itself
    is built and installed from exactly the paths the Dockerfile copies.
    """
    # Without build isolation the build backend is this interpreter's setuptools.
    have = installed_version("setuptools")
    require_tool("setuptools" if have >= (61, 0) else None, "setuptools>=61")
    root = tmp_path_factory.mktemp("image")
    context = root / "context"
    for path in copied_paths():
        src = REPO / path
        if not src.exists():
            pytest.fail(f"the Dockerfile copies {path}, which does not exist")
        dst = context / path
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(src, dst)
    venv = root / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=60
    )
    install = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--quiet",
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    yield venv


def image_env(venv: Path, workdir: Path) -> dict[str, str]:
    """The image's environment: its venv first on PATH, no DRIFTWARDEN_* from this shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIFTWARDEN_", "PYTHON"))}
    env.update(
        PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
        HOME=str(workdir / "nonexistent"),
    )
    return env


def run_image_command(
    venv: Path, argv: list[str], tmp_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # /etc/driftwarden/policy.yaml is the deployed policy file, copied there by the image.
    policy = str(K8S / "base" / "policy.yaml")
    argv = [policy if a == "/etc/driftwarden/policy.yaml" else a for a in argv]
    # The installed console script, not this checkout: run from an unrelated directory.
    exe = venv / "bin" / argv[0]
    assert exe.exists(), f"{argv[0]} is not a console script of the installed project"
    env = image_env(venv, tmp_path) | (extra_env or {})
    return subprocess.run(
        [str(exe), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )


def test_entrypoint_prints_its_version_from_a_fresh_virtualenv(
    fresh_venv: Path, tmp_path: Path
) -> None:
    entry = entrypoint_and_cmd()
    done = run_image_command(fresh_venv, [entry[0], "--version"], tmp_path)
    assert done.returncode == 0, done.stderr
    from monitor import __version__

    assert done.stdout.strip() == f"driftwarden {__version__}"
    # The installed package, not the checkout, answered.
    where = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c", "import monitor; print(monitor.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=image_env(fresh_venv, tmp_path),
        check=True,
    )
    assert where.stdout.startswith(str(fresh_venv)), where.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployed_policy_passes_check_config_with_each_overlays_environment(
    fresh_venv: Path, tmp_path: Path, rendered: dict[str, Rendered], overlay: str
) -> None:
    # The image's command, with `run` swapped for `check-config` on the same file, under the
    # environment the overlay's ConfigMap gives the pod (environment beats the file).
    cmd = entrypoint_and_cmd()
    assert cmd[1:] == ["run", "--config", "/etc/driftwarden/policy.yaml"]
    env = rendered[overlay].configmap("driftwarden-env")["data"]
    done = run_image_command(fresh_venv, [cmd[0], "check-config", cmd[3]], tmp_path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("ok (2 model policies)")


def test_check_config_in_the_image_rejects_a_broken_override(
    fresh_venv: Path, tmp_path: Path
) -> None:
    cmd = entrypoint_and_cmd()
    env = {"DRIFTWARDEN_KAFKA__SECURITY_PROTOCOL": "SASL_TLS"}
    done = run_image_command(fresh_venv, [cmd[0], "check-config", cmd[3]], tmp_path, env)
    assert done.returncode == 2
    assert "security_protocol" in done.stdout
