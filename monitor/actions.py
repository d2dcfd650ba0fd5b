"""What happens on a health transition: the audit trail, flag flips, alerts and review
sampling. Decisions are made here once per transition; delivery is queued and retried.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from monitor.health import Transition
from monitor.metrics import Metrics

if TYPE_CHECKING:
    from monitor.consumer import DeadLetterWriter
    from monitor.engine import Engine
    from monitor.events import Event
    from monitor.settings import Settings

__all__ = ["Actions", "AuditLog"]

log = logging.getLogger(__name__)


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
            self._file.write(json.dumps(entry, default=str, allow_nan=False) + "\n")


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


class Actions:
    """Turns transitions into audited decisions; subclassed/extended by flag and alert wiring."""

    def __init__(
        self,
        metrics: Metrics,
        audit: AuditLog,
        *,
        policy_mode: Callable[[str], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.audit = audit
        self.policy_mode = policy_mode
        self.clock = clock

    @classmethod
    def from_settings(
        cls, settings: Settings, metrics: Metrics, *, clock: Callable[[], float] = time.time
    ) -> Actions:
        return cls(
            metrics,
            AuditLog(None),
            policy_mode=lambda model: settings.policy_for(model).mode,
            clock=clock,
        )

    async def start(self) -> None:
        self.audit.open()

    async def stop(self, flush_timeout_s: float) -> None:
        self.audit.close()

    def add_routes(self, app: web.Application) -> None:
        return None

    def on_transitions(self, transitions: Sequence[Transition], engine: Engine, now: float) -> None:
        for t in transitions:
            self.audit.write(transition_entry(t, self.policy_mode(t.model)))

    async def after_batch(
        self, events: Sequence[Event], engine: Engine, writer: DeadLetterWriter
    ) -> None:
        return None

    def tick(self, now: float) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"recent": list(self.audit.recent)[-50:]}
