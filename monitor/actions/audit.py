"""The audit trail: every transition and action as append-only JSON lines, and a bounded
in-memory tail for ``/status``.
"""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path
from typing import Any

from monitor.engine.engine import CoverageBuilt
from monitor.engine.health import Transition

__all__ = ["AuditLog", "coverage_entry", "transition_entry"]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


class AuditLog:
    """Append-only JSON lines of every transition and action, plus a bounded in-memory tail."""

    def __init__(self, path: Path | None, *, keep: int = 200) -> None:
        self.path = path
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._file: Any = None

    def open(self) -> None:
        if self.path is not None and self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8", buffering=1)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, entry: dict[str, Any]) -> None:
        self.recent.append(entry)
        if self._file is not None:
            self._file.write(json.dumps(entry, default=str) + "\n")


def transition_entry(t: Transition, mode: str) -> dict[str, Any]:
    return {
        "kind": "transition",
        "at": t.at,
        "model": t.model,
        "from": t.from_level.label,
        "to": t.to_level.label,
        "mode": mode,
        "why": t.describe(),
        "causes": [
            {
                "signal": c.signal,
                "level": c.level.label,
                "statistic": _finite(c.statistic),
                "threshold": _finite(c.threshold),
                "effect": _finite(c.effect),
                "held_s": round(c.held_s, 3),
            }
            for c in t.causes
        ],
    }


def coverage_entry(built: CoverageBuilt) -> dict[str, Any]:
    """What a model watches once its discovery ended, each signal with its origin and why."""
    return {
        "kind": "coverage",
        "at": built.at,
        "model": built.model,
        "signals": [
            {
                "name": c.name,
                "origin": c.origin,
                "reason": c.reason,
                "source": c.policy.source.value,
                "detector": c.policy.detector_spec.type,
                "level": c.policy.level,
            }
            for c in built.signals
        ],
    }
