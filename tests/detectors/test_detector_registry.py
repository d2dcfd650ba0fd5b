"""The registry: one line per detector builds the policy union and the class map; a spec's
type fixes its detector's type (checked by mypy, run here on a file that must fail); a
capability is a class, never an instance flag."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from pydantic import ValidationError

from detectors import (
    DETECTORS,
    InputKind,
    QuantileSpec,
    RateWindowSpec,
    Verdict,
    build_detector,
    default_spec,
    detector_class,
    parse_spec,
    restore_detector,
)
from detectors.base import BaseDetector
from detectors.missing import MissingRateLimitDetector, MissingRateSpec
from detectors.quantile import QuantileDetector, QuantileLimitDetector
from detectors.rates import RateLimitDetector, RateWindowDetector
from detectors.registry import TYPES, _class_map

ROOT = Path(__file__).resolve().parents[2]


def test_every_registered_detector_is_in_the_union_and_the_class_map() -> None:
    assert len(TYPES) == len(set(TYPES)) == len(DETECTORS)
    for cls, kind in zip(DETECTORS, TYPES, strict=True):
        spec = parse_spec({"type": kind})
        assert type(spec) is cls.spec_class
        # The detector is generic over exactly that spec class.
        assert get_args(cls.__orig_bases__[0]) == (cls.spec_class,)  # type: ignore[attr-defined]
        assert issubclass(detector_class(spec), cls)


def test_an_unknown_type_names_every_registered_one() -> None:
    with pytest.raises(ValidationError) as info:
        parse_spec({"type": "kswin"})
    message = str(info.value)
    assert all(repr(kind) in message for kind in TYPES), message


def test_a_spec_or_name_registered_twice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import detectors.registry as registry

    class Twin(RateWindowDetector):
        pass

    monkeypatch.setattr(registry, "DETECTORS", (*DETECTORS, Twin))
    with pytest.raises(TypeError, match="Twin: spec 'rate_window' already belongs to"):
        _class_map()


def test_an_unregistered_spec_is_a_type_error() -> None:
    from detectors.window import WindowSpec

    with pytest.raises(TypeError, match="not a registered detector spec"):
        build_detector(WindowSpec())


@pytest.mark.parametrize("kind", list(InputKind))
def test_each_input_kind_defaults_to_a_registered_detector(kind: InputKind) -> None:
    spec = default_spec(kind)
    assert spec.input_kind is kind and spec.type in TYPES


@pytest.mark.parametrize(
    ("spec", "relative", "limited"),
    [
        (RateWindowSpec(), RateWindowDetector, RateLimitDetector),
        (MissingRateSpec(), None, MissingRateLimitDetector),
        (QuantileSpec(), QuantileDetector, QuantileLimitDetector),
    ],
)
def test_an_absolute_limit_is_a_class_of_its_own(
    spec: Any, relative: type[BaseDetector[Any]] | None, limited: type[BaseDetector[Any]]
) -> None:
    with_limit = spec.model_copy(update={"threshold": 0.5})
    det = build_detector(with_limit)
    assert type(det) is limited
    assert limited.breach_verdict is Verdict.ANOMALY  # type: ignore[attr-defined]
    assert type(build_detector(spec)) is not limited
    if relative is not None:
        assert type(build_detector(spec)) is relative
        assert relative.breach_verdict is Verdict.DRIFT  # type: ignore[attr-defined]
    # Restored from bytes, the variant is the same class.
    assert type(restore_detector(det.to_bytes())) is limited
    # Built by hand with the wrong spec, a variant says which one it takes.
    with pytest.raises(ValueError, match=r"takes a \w+ spec with a threshold"):
        limited(spec)
    wrong = type(build_detector(spec))
    with pytest.raises(ValueError, match=r"takes a \w+ spec without a threshold"):
        wrong(with_limit)


@pytest.mark.parametrize("kind", TYPES)
def test_no_detector_keeps_a_capability_in_an_instance_flag(kind: str) -> None:
    raw: dict[str, Any] = {"type": kind}
    det = build_detector(parse_spec(raw))
    flags = {"absolute", "breach_verdict", "absolute_limit", "numeric_values", "gate_field"}
    assert not flags & set(vars(det)), sorted(flags & set(vars(det)))
    threshold = type(det.spec).model_fields.get("threshold")
    if threshold is not None and threshold.default is None:
        limited = build_detector(parse_spec({**raw, "threshold": 0.5}))
        assert not flags & set(vars(limited))
        assert limited.update_many(np.zeros(10)).verdict is Verdict.INCONCLUSIVE


def test_mypy_refuses_a_detector_built_from_another_detectors_spec(tmp_path: Path) -> None:
    # Lines marked "refused" must each give exactly one arg-type error; the others none.
    source = textwrap.dedent(
        """
        from typing import assert_type

        from detectors.base import BaseDetector
        from detectors.numeric import KSWindowDetector, KSWindowSpec
        from detectors.rates import RateWindowDetector, RateWindowSpec
        from detectors.registry import build_detector

        KSWindowDetector(KSWindowSpec())
        RateWindowDetector(RateWindowSpec())
        assert_type(build_detector(KSWindowSpec()), BaseDetector[KSWindowSpec])
        RateWindowDetector(KSWindowSpec())  # refused
        KSWindowDetector(RateWindowSpec(threshold=0.1))  # refused
        wrong: BaseDetector[RateWindowSpec] = build_detector(KSWindowSpec())  # refused
        """
    )
    checked = tmp_path / "spec_types.py"
    checked.write_text(source)
    # In a process of its own: mypy raises the interpreter's recursion limit, which other
    # tests' deep-nesting checks rely on.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            str(checked),
        ],
        cwd=ROOT,
        # This tree's ``detectors``, not an installed copy.
        env={**os.environ, "MYPYPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    stdout, stderr, status = done.stdout, done.stderr, done.returncode
    refused = {i for i, line in enumerate(source.splitlines(), 1) if line.endswith("# refused")}
    errors: dict[int, str] = {}
    for line in stdout.splitlines():
        where, _, message = line.partition(": error: ")
        if message:
            errors[int(where.rsplit(":", 1)[1])] = message
    assert set(errors) == refused, stdout + stderr
    assert all("[arg-type]" in message for message in errors.values()), stdout
    assert status == 1


def test_detector_modules_do_not_import_the_registry() -> None:
    # The dependency runs one way: the registry imports the detector modules, never back
    # (nor does any of them reach into the daemon).
    package = ROOT / "detectors"
    for module in sorted(package.glob("*.py")):
        if module.name in ("__init__.py", "registry.py"):
            continue
        tree = ast.parse(module.read_text(encoding="utf-8"))
        imported = {
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        } | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        bad = {
            name
            for name in imported
            if name in ("detectors", "detectors.registry") or name.startswith("monitor")
        }
        assert not bad, f"{module.name} imports {sorted(bad)}"
