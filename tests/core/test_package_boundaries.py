"""The package graph runs one way: ``alerts`` and ``detectors`` import nothing from ``monitor``,
and the daemon's core (``monitor`` minus ``monitor/tools`` and ``monitor/cli``) imports no tool.

Every file is parsed, not imported, so an import inside a function or behind ``TYPE_CHECKING``
counts as much as one at the top, and so does ``importlib.import_module("monitor...")``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool) -> list[tuple[int, str]]:
    """Every module that ``source`` (the text of ``module``) imports, absolute, with its line:
    ``import``, ``from ... import`` (relative ones resolved against the module's package, and
    ``from pkg import mod`` counted as ``pkg.mod`` too) and ``import_module``/``__import__``
    calls with a literal name.
    """
    tree = ast.parse(source, filename=module)
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in {"import_module", "__import__"} and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.append((node.lineno, first.value))
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(files: list[Path], forbidden: str) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in files
        for line, module in imported_modules(
            path.read_text(encoding="utf-8"),
            _module_name(path),
            is_package=path.name == "__init__.py",
        )
        if _within(module, forbidden)
    ]


def _python_files(*packages: str) -> list[Path]:
    files = sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))
    assert files, f"no Python file under {packages}: wrong root {ROOT}?"
    return files


@pytest.mark.parametrize("package", ["alerts", "detectors"])
def test_alerts_and_detectors_import_nothing_from_monitor(package: str) -> None:
    assert violations(_python_files(package), "monitor") == []


def test_the_daemon_core_imports_no_tool() -> None:
    apart = (ROOT / "monitor" / "tools", ROOT / "monitor" / "cli")
    core = [p for p in _python_files("monitor") if not any(p.is_relative_to(a) for a in apart)]
    assert len(core) > 20
    assert violations(core, "monitor.tools") == []


@pytest.mark.parametrize(
    ("source", "forbidden", "expected"),
    [
        ("import monitor\n", "monitor", {"monitor"}),
        (
            "from monitor.errors import ConfigError\n",
            "monitor",
            {"monitor.errors", "monitor.errors.ConfigError"},
        ),
        ("def f():\n    from monitor import tools\n", "monitor.tools", {"monitor.tools"}),
        ("import importlib\nimportlib.import_module('monitor.x')\n", "monitor", {"monitor.x"}),
        ("from ..tools import demo\n", "monitor.tools", {"monitor.tools", "monitor.tools.demo"}),
        ("from . import server\n", "monitor.tools", set()),
        ("import monitoring\nfrom alerts import base\n", "monitor", set()),
    ],
)
def test_the_checker_sees_every_form_of_import(
    source: str, forbidden: str, expected: set[str]
) -> None:
    # As if the source were monitor/http/probe.py, so that ``..tools`` is monitor.tools.
    found = imported_modules(source, "monitor.http.probe", is_package=False)
    assert {m for _, m in found if _within(m, forbidden)} == expected


def test_monitor_catches_the_errors_alerts_raises() -> None:
    from alerts.config import AlertmanagerSpec, build_sinks
    from monitor.errors import AlertSinkError, ConfigError, DriftwardenError

    spec = AlertmanagerSpec(type="alertmanager", url="http://am:9093", bearer_token_env="AM_TOK")
    with pytest.raises(ConfigError) as caught:
        build_sinks([spec], environ={})
    assert isinstance(caught.value, DriftwardenError)
    assert caught.value.problems == [
        "alerts.sinks[0].bearer_token_env: environment variable AM_TOK is not set or empty"
    ]
    assert issubclass(AlertSinkError, DriftwardenError)
