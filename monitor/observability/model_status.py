"""/status's per-model part, kept per model: each model's JSON (``describe``) is rebuilt only
when something it shows changed since it was built (its Readings, health and signal levels,
events, coverage, outcomes), so a request costs what changed, not a rebuild and an encoding of
every model.

What a model shows is checked against a key of the objects it is built from: detectors hand
back the same Reading object until they test again, levels are enum members, and the rest are
a few numbers per model (no encoding, no dict per member).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from monitor.engine.engine import describe

if TYPE_CHECKING:
    from monitor.engine.engine import ModelMonitor

__all__ = ["ModelStatus", "status_json"]


def _dumps(data: Any) -> str:
    """As the HTTP server encodes /status (``monitor.http.server._json``)."""
    return json.dumps(data, default=str, allow_nan=False)


def _key(monitor: ModelMonitor) -> tuple[Any, ...]:
    """Everything ``describe(monitor)`` reads that may change while the monitor lives."""
    schema = monitor.schema
    join = monitor.outcomes
    signals = monitor.signals
    return (
        monitor.policy,
        monitor.health.level,
        monitor.model_version,
        monitor.events,
        monitor.last_event_at,
        monitor.discovering,
        monitor.discovery_started_at,
        None if schema is None else schema.events,
        monitor.notes,
        monitor.covered,
        len(monitor.added),
        len(signals),
        [signal.level for signal in signals],
        [member.reading for signal in signals for member in signal.members],
        # Small, and moved by other models too (their share of the outcome budget).
        None if join is None else join.describe(),
    )


class _Entry:
    __slots__ = ("key", "monitor", "text")

    def __init__(self, monitor: ModelMonitor, key: tuple[Any, ...]) -> None:
        self.monitor = monitor
        self.key = key
        self.text = _dumps(describe(monitor))


class ModelStatus:
    """The per-model JSON of one engine's monitors (its own, live mapping), rebuilt for the
    models that changed since the last request.

    >>> from monitor.config.policy import ModelPolicy
    >>> from monitor.engine.engine import Engine
    >>> from monitor.engine.events import Event
    >>> engine = Engine(lambda model: ModelPolicy(), max_models=10)
    >>> engine.apply([Event(model="a", latency_ms=5.0)], now=1.0)
    []
    >>> status = ModelStatus(engine.models)
    >>> json.loads(status.json())["a"]["events"], status.rebuilt
    (1, 1)
    >>> json.loads(status.json())["a"]["events"], status.rebuilt  # nothing changed: kept
    (1, 0)
    >>> engine.apply([Event(model="a", latency_ms=6.0)], now=2.0)
    []
    >>> json.loads(status.json())["a"]["events"], status.rebuilt
    (2, 1)
    """

    def __init__(self, monitors: Mapping[str, ModelMonitor]) -> None:
        self.monitors = monitors
        self._entries: dict[str, _Entry] = {}
        #: Models rebuilt by the last refresh (for tests and the bench).
        self.rebuilt = 0

    def refresh(self) -> list[tuple[str, _Entry]]:
        """Each model's entry, rebuilt where its key moved; models gone are forgotten."""
        entries = self._entries
        monitors = self.monitors
        if len(entries) > len(monitors) or any(model not in monitors for model in entries):
            for model in [m for m in entries if m not in monitors]:
                del entries[model]
        rebuilt = 0
        found = []
        for model, monitor in monitors.items():
            key = _key(monitor)
            entry = entries.get(model)
            if entry is None or entry.monitor is not monitor or entry.key != key:
                entry = entries[model] = _Entry(monitor, key)
                rebuilt += 1
            found.append((model, entry))
        self.rebuilt = rebuilt
        return found

    def json(self) -> str:
        """``Engine.snapshot()`` encoded as /status encodes it, from each model's kept text."""
        return (
            "{"
            + ", ".join(f"{_dumps(model)}: {entry.text}" for model, entry in self.refresh())
            + "}"
        )


def status_json(head: dict[str, Any], models: ModelStatus, tail: dict[str, Any]) -> str:
    """``{**head, "models": ..., **tail}`` encoded as /status encodes it, the models from their
    kept text."""
    parts = [_dumps(head)[:-1] if head else "{"]
    sep = ", " if head else ""
    parts.append(f'{sep}"models": {models.json()}')
    for name, value in tail.items():
        parts.append(f", {_dumps(name)}: {_dumps(value)}")
    parts.append("}")
    return "".join(parts)
