"""The docs name only code that exists: every ``monitor/``, ``detectors/`` and ``alerts/`` path
and every dotted ``monitor.x.y`` name in README.md and docs/ resolves to a file (and, for a
name past the module, to a definition in it), so a layout move cannot leave a stale doc behind.

Resolution is static (files and the AST of each module): nothing is imported, so the check
needs no service and costs a few milliseconds. docs/architecture.md must also name every
subpackage and top-level module of ``monitor/`` (its package map is the newcomer's index).
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Modules the docs may name before they exist (a page written ahead of its code, on a
#: branch): empty on main. ``test_allow_list_names_only_missing_modules`` fails once a listed
#: module exists, so the list cannot outlive its reason.
ALLOWED_TARGETS: frozenset[str] = frozenset()

#: A path into one of the three code packages, not the tail of a longer one
#: (``tests/alerts/x.py``): a file (``.py`` or any other, a page or a policy the package
#: ships), optionally with ``::Name`` after it, or a folder.
_PATH = re.compile(
    r"(?<![\w./-])((?:monitor|detectors|alerts)/(?:\w+/)*(?:\w[\w-]*\.\w+|(?=[\s`)'\",;:]|$)))"
    r"(?:::([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*))?"
)
#: A table row naming a module by its bare file name (``| `base.py` | ... |``).
_TABLE_MODULE = re.compile(r"^\|\s*`(\w+\.py)`\s*\|")
#: A dotted name rooted at ``monitor`` (``monitor.http.server.MAX_REQUEST_BODY_BYTES``).
_DOTTED = re.compile(r"(?<![\w.])(monitor(?:\.[A-Za-z_]\w*)+)")


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


@dataclass(frozen=True, slots=True)
class Reference:
    doc: str
    line: int
    text: str  # as written
    path: str  # the file or folder it names, relative to the root
    names: tuple[str, ...]  # what it names inside that module (may be empty)


def references(text: str, doc: str) -> list[Reference]:
    """Every path and dotted name of ``monitor``/``detectors``/``alerts`` in ``text``, and
    every module of a package's table (a row starting with a bare ``name.py``, relative to
    the last folder the text named before the table: "The code lives in `alerts/`")."""
    found: list[Reference] = []
    folder: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        row = _TABLE_MODULE.match(line)
        if row is not None and folder is not None:
            found.append(Reference(doc, number, row.group(1), folder + row.group(1), ()))
        for m in _PATH.finditer(line):
            names = tuple(m.group(2).split(".")) if m.group(2) else ()
            found.append(Reference(doc, number, m.group(0), m.group(1), names))
            if row is None and not line.startswith("|") and m.group(1).endswith("/"):
                folder = m.group(1)
        for m in _DOTTED.finditer(line):
            parts = m.group(1).split(".")
            found.append(Reference(doc, number, m.group(1), "", tuple(parts)))
    return found


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _defined(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """Names bound at the level of ``body`` (defs, classes, assignments, imports)."""
    names: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        names[leaf.id] = node
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
        elif isinstance(node, (ast.If, ast.Try)):
            names.update(_defined(node.body))
    return names


def _missing_name(module: Path, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` (a name in ``module``, then attributes of a class) that is not
    defined; None when all are (past a non-class, nothing more can be checked statically)."""
    scope: list[ast.stmt] = _tree(module).body
    for name in names:
        node = _defined(scope).get(name)
        if node is None:
            return name
        if not isinstance(node, ast.ClassDef):
            return None
        scope = node.body
    return None


def _module_file(parts: tuple[str, ...], root: Path) -> Path | None:
    base = root.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def problem(
    ref: Reference, root: Path = ROOT, allowed: frozenset[str] = ALLOWED_TARGETS
) -> str | None:
    """Why ``ref`` is stale, or None when it resolves (or names an allowed target)."""
    if ref.path:
        if ref.path in allowed:
            return None
        target = root / ref.path
        if ref.path.endswith("/"):
            return None if target.is_dir() else f"no folder {ref.path}"
        if not target.is_file():
            return f"no file {ref.path}"
        if ref.names and target.suffix != ".py":
            return f"{ref.path} is no module to name {'.'.join(ref.names)!r} in"
        missing = _missing_name(target, ref.names) if ref.names else None
        return None if missing is None else f"{ref.path} defines no {missing!r}"
    parts = ref.names
    # The longest prefix that is a module (or an allowed target); the rest are names in it.
    for cut in range(len(parts), 0, -1):
        prefix = parts[:cut]
        if "/".join(prefix) + ".py" in allowed:
            return None
        module = _module_file(prefix, root)
        if module is None:
            continue
        missing = _missing_name(module, parts[cut:]) if parts[cut:] else None
        if missing is None:
            return None
        if module.name == "__init__.py" and missing == parts[cut]:
            return f"no module or name {'.'.join(parts[: cut + 1])}"
        return f"{'.'.join(prefix)} defines no {missing!r}"
    return f"no module or name {'.'.join(parts)}"


def test_every_code_path_and_module_named_in_the_docs_exists() -> None:
    refs = [
        ref
        for doc in doc_files()
        for ref in references(doc.read_text(encoding="utf-8"), str(doc.relative_to(ROOT)))
    ]
    # The docs do name code: a pattern that matched nothing would make this test vacuous.
    assert len(refs) > 20
    stale = [f"{r.doc}:{r.line}: {r.text}: {why}" for r in refs if (why := problem(r))]
    assert not stale, "stale references in the docs:\n" + "\n".join(stale)


def test_allow_list_names_only_missing_modules() -> None:
    arrived = sorted(path for path in ALLOWED_TARGETS if (ROOT / path).exists())
    assert not arrived, f"these modules exist now: remove them from ALLOWED_TARGETS: {arrived}"


def test_architecture_maps_every_package_of_monitor() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    monitor = ROOT / "monitor"
    expected = [f"monitor/{p.parent.name}/" for p in sorted(monitor.glob("*/__init__.py"))]
    expected += [
        f"monitor/{p.name}" for p in sorted(monitor.glob("*.py")) if not p.name.startswith("__")
    ]
    assert len(expected) > 10
    absent = [name for name in expected if f"`{name}`" not in page]
    assert not absent, f"docs/architecture.md's package map lacks {absent}"


# ------------------------------------------------------------------ the checker itself


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "monitor" / "http").mkdir(parents=True)
    (tmp_path / "monitor" / "__init__.py").write_text('"""m."""\n__version__ = "1"\n')
    (tmp_path / "monitor" / "http" / "__init__.py").write_text("")
    (tmp_path / "monitor" / "http" / "server.py").write_text(
        "LIMIT = 1\n\nclass HttpServer:\n    port: int\n    def start(self): ...\n"
        "\ndef helper(): ...\n"
    )
    (tmp_path / "alerts").mkdir()
    (tmp_path / "alerts" / "base.py").write_text("from x import Alert\n")
    return tmp_path


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("`monitor/http/server.py`", None),
        ("`monitor/http/server.py::HttpServer.start`", None),
        ("`monitor/http/`", None),
        ("see monitor/http/server.py.", None),
        ("`alerts/base.py::Alert`", None),
        ("`monitor.http.server`", None),
        ("`monitor.http.server.LIMIT`", None),
        ("`monitor.http.server.HttpServer.port`", None),
        ("`monitor.http.server.helper.anything`", None),  # past a function: not checked
        ("`monitor.http`", None),
        ("`monitor.__version__`", None),
        ("`monitor/planned.py`", None),  # an allowed target
        ("`monitor.planned.Thing`", None),
        # stale, one of each kind
        ("`monitor/server.py`", "no file monitor/server.py"),
        ("`monitor/http/consumer.py`", "no file monitor/http/consumer.py"),
        ("`detectors/state.py`", "no file detectors/state.py"),
        ("`monitor/kafka/`", "no folder monitor/kafka/"),
        ("`monitor/http/server.py::Nope`", "monitor/http/server.py defines no 'Nope'"),
        ("`monitor/http/server.py::HttpServer.stop`", "monitor/http/server.py defines no 'stop'"),
        ("`monitor.metrics`", "no module or name monitor.metrics"),
        ("`monitor.http.metrics`", "no module or name monitor.http.metrics"),
        ("`monitor.http.server.MAX`", "monitor.http.server defines no 'MAX'"),
        ("`monitor.http.server.HttpServer.stop`", "monitor.http.server defines no 'stop'"),
        ("`monitor.kafka.consumer.EventConsumer`", "no module or name monitor.kafka"),
        ("`monitor/http/static.html`", "no file monitor/http/static.html"),
    ],
)
def test_the_checker_resolves_what_exists_and_names_what_does_not(
    tree: Path, text: str, why: str | None
) -> None:
    refs = references(text, "doc.md")
    assert len(refs) == 1, refs
    assert problem(refs[0], tree, frozenset({"monitor/planned.py"})) == why


def test_a_package_table_is_checked_against_the_folder_named_before_it(tree: Path) -> None:
    text = (
        "The code lives in `monitor/http/`:\n\n| module | owns |\n| --- | --- |\n"
        "| `server.py` | the server |\n| `gone.py` | moved away |\n"
    )
    refs = [r for r in references(text, "doc.md") if r.line >= 5]
    assert [(r.path, problem(r, tree)) for r in refs] == [
        ("monitor/http/server.py", None),
        ("monitor/http/gone.py", "no file monitor/http/gone.py"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "`tests/alerts/test_alertmanager_sink.py`",  # a test path that ends like a code path
        "`bench/monitor/x.py`",
        "`alerts.sinks` in the settings",  # a settings key, not a module
        "the monitor. Then",
        "`tests/detectors/test_detector_extremes.py`",
    ],
)
def test_the_checker_ignores_what_is_not_a_code_reference(text: str) -> None:
    assert references(text, "doc.md") == []
