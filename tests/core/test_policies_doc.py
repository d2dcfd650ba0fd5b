"""docs/policies.md tells what auto coverage does as the code does it: its table of discovered
signals (source, default detector, level) is generated here from ``monitor.engine.discovery``
and compared, and its bounds are the code's, so a retuned default cannot leave the page stale.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from monitor.config.policy import AutoCoverage, AutoLevels, ModelPolicy
from monitor.engine.discovery import MAX_TRACKED_FEATURES, CoveredSignal, ObservedSchema, coverage
from monitor.engine.events import MAX_FEATURES, Event

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "policies.md"
BEGIN = "<!-- auto-coverage-table:"
END = "<!-- end of auto-coverage-table -->"
#: A value no default has: where it shows, the table names the setting instead.
SLO = 123.0


def _schema(events: list[dict[str, Any]]) -> ObservedSchema:
    schema = ObservedSchema()
    schema.observe(Event(model="m", **event) for event in events)
    return schema


#: One schema with every family (numeric prediction and label, 0/1 feedback), one with the
#: variants (a class predicted and labelled, numeric feedback).
EVERY_FAMILY = [
    {
        "features": {"x": float(i), "c": "ab"[i % 2]},
        "prediction": i / 10,
        "confidence": 0.9,
        "latency_ms": 20.0 + i,
        "feedback": i % 2,
        "label": i / 10,
    }
    for i in range(10)
]
VARIANTS = [
    {"prediction": "yes", "feedback": 0.5 * i, "label": "yes", "confidence": 0.8} for i in range(10)
]


def _detector(signal: CoveredSignal) -> str:
    policy = signal.policy
    spec = policy.detector_spec
    chosen = policy.detector
    params = sorted(chosen.model_fields_set - {"type"}) if chosen is not None else []
    text = f"`{spec.type}`" + "".join(f" {p}={getattr(spec, p)}" for p in params)
    if policy.thresholds is not None:
        bounds = {value for _, value in policy.thresholds.items()}
        assert bounds == {SLO}, f"{signal.name}: thresholds the table cannot name: {bounds}"
        text += ", thresholds `auto.latency_slo_ms`"
    return text


def _level_fields(policy: ModelPolicy, schema: ObservedSchema) -> dict[str, str]:
    """Which ``auto.levels`` field sets each signal's level: found by changing each in turn."""
    base = {c.name: c.policy.level for c in coverage(policy, schema)}
    found: dict[str, str] = {}
    for name, info in AutoLevels.model_fields.items():
        field = info.alias or name
        other = "critical"
        levels = policy.auto.levels.model_copy(update={name: other})
        probe = policy.model_copy(
            update={"auto": policy.auto.model_copy(update={"levels": levels})}
        )
        for covered in coverage(probe, schema):
            if covered.policy.level == other and base[covered.name] != other:
                found[covered.name] = field
    return found


def generated_rows() -> list[tuple[str, str, str, str]]:
    policy = ModelPolicy(auto=AutoCoverage(latency_slo_ms=SLO))
    rows: list[tuple[str, str, str, str]] = []
    for events in (EVERY_FAMILY, VARIANTS):
        schema = _schema(events)
        fields = _level_fields(policy, schema)
        for covered in coverage(policy, schema):
            row = (
                f"`{covered.name}`",
                f"`{covered.policy.source.value}`",
                _detector(covered),
                f"`{covered.policy.level}` (`{fields[covered.name]}`)",
            )
            if row not in rows:
                rows.append(row)
    return rows


def documented_rows() -> list[tuple[str, str, str, str]]:
    text = PAGE.read_text(encoding="utf-8")
    begin = text.index(BEGIN)
    table = text[text.index("\n", begin) : text.index(END)].strip().splitlines()[2:]
    rows = []
    for line in table:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        signal, _watches, source, detector, level = cells
        rows.append((signal, source, detector, level))
    return rows


def test_the_table_of_discovered_signals_is_the_codes() -> None:
    generated = generated_rows()
    assert len(generated) >= 12  # every family and the two variants
    expected = "\n".join(" | ".join(row) for row in generated)
    assert sorted(documented_rows()) == sorted(generated), (
        "docs/policies.md's auto-coverage table differs from the code; its rows should be "
        "(signal | watches | source | detector | level, without the free-text column):\n" + expected
    )


def test_the_table_covers_every_level_field() -> None:
    levels = {re.sub(r".*\(`(\w+)`\)", r"\1", row[3]) for row in generated_rows()}
    assert levels == {info.alias or name for name, info in AutoLevels.model_fields.items()}


def test_the_page_states_the_codes_bounds() -> None:
    text = PAGE.read_text(encoding="utf-8")
    fields = AutoCoverage.model_fields
    for name in ("discover_events", "max_features"):
        assert f"`auto.{name}` (default {fields[name].default:,}" in text, name
    assert f"at most {_le(fields['max_features']):,})" in text
    assert f"1 to {_le(fields['discover_events']):,})" in text
    assert f"`MAX_TRACKED_FEATURES` ({MAX_TRACKED_FEATURES:,}," in text
    assert f"An event holds at most {MAX_FEATURES:,} features" in text


def _le(info: Any) -> int:
    return int(next(m.le for m in info.metadata if getattr(m, "le", None) is not None))
