"""/status's per-model part, kept per model: each model's JSON (what
``monitor.engine.engine.describe`` gives) is kept in parts, its head (state, events), its
coverage, each signal, its outcomes, and a part is rebuilt only when what it shows changed
since (its Readings, levels, events, coverage, outcomes): a request costs what changed, not a
rebuild and an encoding of every model. A busy model whose events moved but whose detectors did
not test costs one small encoding.

What a part shows is checked against the objects it is built from: detectors hand back the
same Reading object until they test again, levels are enum members, and the rest are a few
numbers per model (no encoding, no dict per member).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from monitor.engine.engine import describe_coverage, describe_signal

if TYPE_CHECKING:
    from monitor.engine.discovery import CoveredSignal
    from monitor.engine.engine import ModelMonitor

__all__ = ["ModelStatus", "status_json"]


def _dumps(data: Any) -> str:
    """As the HTTP server encodes /status (``monitor.http.server._json``)."""
    return json.dumps(data, default=str, allow_nan=False)


def _shape_key(monitor: ModelMonitor) -> tuple[Any, ...]:
    """What the model's coverage and its signals' origins are built from."""
    schema = monitor.schema
    return (
        monitor.policy,
        monitor.discovering,
        monitor.discovery_started_at,
        None if schema is None else schema.events,
        monitor.notes,
        monitor.covered,
        len(monitor.added),
        len(monitor.signals),
    )


class _Entry:
    """One model's kept JSON, in parts: each rebuilt only when what it shows moved."""

    __slots__ = ("head", "monitor", "outcomes", "shape", "shape_key", "signals", "text")

    def __init__(self, monitor: ModelMonitor) -> None:
        self.monitor = monitor
        self.head: tuple[Any, ...] | None = None
        self.shape_key: tuple[Any, ...] | None = None
        #: The coverage's text and the signals' origins.
        self.shape: tuple[str, dict[str, CoveredSignal]] = ("", {})
        #: Per signal: (its level, its members' Readings) and its text.
        self.signals: list[tuple[list[Any], str]] = []
        self.outcomes: tuple[Any, str] | None = None
        self.text = ""

    def refresh(self) -> bool:
        """Rebuild what moved; True when the model's text changed."""
        monitor = self.monitor
        head = (
            monitor.health.level,
            monitor.model_version,
            monitor.events,
            monitor.last_event_at,
        )
        moved = head != self.head
        shape_key = _shape_key(monitor)
        if shape_key != self.shape_key:
            self.shape_key = shape_key
            origins = {c.name: c for c in monitor.coverage()}
            self.shape = (_dumps(describe_coverage(monitor)), origins)
            self.signals = []
            moved = True
        origins = self.shape[1]
        kept = self.signals
        signals = monitor.signals
        for i, signal in enumerate(signals):
            key = [signal.level, *[member.reading for member in signal.members]]
            if i < len(kept) and kept[i][0] == key:
                continue
            shown = (key, _dumps(describe_signal(signal, origins.get(signal.name))))
            if i < len(kept):
                kept[i] = shown
            else:
                kept.append(shown)
            moved = True
        join = monitor.outcomes
        if join is not None:
            # Small, and moved by other models too (their share of the outcome budget).
            described = join.describe()
            added = [covered.to_json() for covered in monitor.added]
            if self.outcomes is None or self.outcomes[0] != (described, added):
                text = f'"outcomes": {_dumps(described)}, "added_signals": {_dumps(added)}'
                self.outcomes = ((described, added), text)
                moved = True
        elif self.outcomes is not None:
            self.outcomes, moved = None, True
        if not moved:
            return False
        self.head = head
        names = [signal.name for signal in signals]
        shown_signals = ", ".join(
            f"{_dumps(name)}: {text}" for name, (_, text) in zip(names, kept, strict=True)
        )
        head_text = _dumps(
            {
                "state": monitor.health.level.label,
                "mode": monitor.policy.mode,
                "model_version": monitor.model_version,
                "events": monitor.events,
                "last_event_at": monitor.last_event_at,
            }
        )[:-1]
        tail = "" if self.outcomes is None else ", " + self.outcomes[1]
        self.text = (
            f'{head_text}, "coverage": {self.shape[0]}, "signals": {{{shown_signals}}}{tail}}}'
        )
        return True


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
            entry = entries.get(model)
            if entry is None or entry.monitor is not monitor:
                entry = entries[model] = _Entry(monitor)
            if entry.refresh():
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
