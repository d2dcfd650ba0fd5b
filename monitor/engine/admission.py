"""Which model ids get a monitor: models named in the policy always; other ids up to
``engine.max_models``, and past it only after probation and in place of an evictable model.

The rule (docs/scaling.md, "Model admission"):

- A model named in the policy (``models.<id>``) is always admitted and never evicted; it
  does not count against ``max_models``, which bounds only the ids the policy does not name
  (the policy file bounds the named ones).
- An unnamed id is admitted on first sight while fewer than ``max_models`` unnamed models
  are watched.
- When they are all taken, a new id is on probation: it is admitted once it has been seen in
  ``admit_after_events`` events within about ``probation_window_s`` (counted in a fixed-size
  count-min sketch, so a flood of one-shot ids costs no memory per id and never takes a
  slot), and only in place of an evictable model: healthy (ok, nothing held or timed), no
  flag held, no open incident, and either *unproven* (admitted on first sight and seen in
  fewer than ``admit_after_events`` events so far: the one-shot ids of a flood) or silent
  for ``evict_idle_s``. The least recently seen such model goes first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from enum import StrEnum

import numpy as np

__all__ = ["Admission", "CandidateSketch", "Refusal"]


class Refusal(StrEnum):
    """Why an event's model got no monitor (the ``reason`` of events_refused_total)."""

    #: Unnamed models fill ``max_models`` and this id has not passed probation yet.
    PROBATION = "probation"
    #: The id passed probation but no watched model may be evicted for it.
    MODEL_LIMIT = "model_limit"


class CandidateSketch:
    """Approximate event counts of candidate ids over a sliding window of two generations.

    A count-min sketch (``depth`` rows of ``width`` counters): an id's estimate is never
    below its true count within the window, and exceeds it only by collisions. The window
    rotates every ``window_s``: counts of the last one to two windows are kept.
    """

    def __init__(self, *, window_s: float, width: int = 1 << 18, depth: int = 4) -> None:
        if width & (width - 1) or width < 1024:
            raise ValueError("width must be a power of two of at least 1024.")
        if not 1 <= depth <= 8:
            raise ValueError("depth must be between 1 and 8.")
        if not window_s > 0:
            raise ValueError("window_s must be positive.")
        self.window_s = window_s
        self.width = width
        self.depth = depth
        # Allocated on first use: a daemon that never fills max_models pays nothing.
        self._current: np.ndarray | None = None
        self._previous: np.ndarray | None = None
        self._window_start = 0.0
        self._rows = np.arange(depth)[:, None]

    def _cells(self, ids: Iterable[str]) -> np.ndarray:
        """Column index of each id in each row, shape (depth, n)."""
        mask = self.width - 1
        digests = b"".join(
            hashlib.blake2b(i.encode("utf-8", "surrogatepass"), digest_size=32).digest()
            for i in ids
        )
        words = np.frombuffer(digests, dtype="<u4").reshape(-1, 8)[:, : self.depth]
        return (words & mask).T.astype(np.intp)

    def add(self, ids: list[str], counts: list[int], now: float) -> list[int]:
        """Count ``counts[i]`` sightings of ``ids[i]`` (distinct ids); return the estimates
        including them."""
        if not ids:
            return []
        if self._current is None or self._previous is None:
            self._current = np.zeros((self.depth, self.width), dtype=np.uint32)
            self._previous = np.zeros_like(self._current)
            self._window_start = now
        elif now - self._window_start >= self.window_s:
            stale = self._previous
            # More than two windows of silence: nothing of the previous one is recent either.
            stale.fill(0)
            if now - self._window_start >= 2 * self.window_s:
                self._current.fill(0)
            self._previous, self._current = self._current, stale
            self._window_start = now
        cells = self._cells(ids)
        added = np.minimum(np.asarray(counts, dtype=np.int64), 1 << 30).astype(np.uint32)
        current = self._current
        np.add.at(current, (self._rows, cells), np.broadcast_to(added, cells.shape))
        totals = current[self._rows, cells].astype(np.int64) + self._previous[self._rows, cells]
        return [int(x) for x in totals.min(axis=0)]


class Admission:
    """The admission and eviction rule of the engine (see the module docstring); keeps the
    unnamed models in order of last sight, the unproven apart from the proven."""

    def __init__(
        self,
        *,
        max_models: int,
        named: Iterable[str] = (),
        admit_after_events: int = 3,
        probation_window_s: float = 300.0,
        evict_idle_s: float = 600.0,
        scan: int = 64,
    ) -> None:
        if max_models < 1:
            raise ValueError("max_models must be at least 1.")
        if admit_after_events < 1:
            raise ValueError("admit_after_events must be at least 1.")
        if not evict_idle_s > 0:
            raise ValueError("evict_idle_s must be positive.")
        self.max_models = max_models
        self.named = frozenset(named)
        self.admit_after_events = admit_after_events
        self.probation_window_s = probation_window_s
        self.evict_idle_s = evict_idle_s
        #: Models looked at per eviction; one that may not go is moved to the back, so the
        #: next search starts elsewhere (the cost per new id stays bounded).
        self.scan = scan
        self.sketch = CandidateSketch(window_s=probation_window_s)
        #: Unnamed models by last sight (oldest first): first-sight admissions with fewer
        #: than ``admit_after_events`` events, and the others.
        self._unproven: OrderedDict[str, None] = OrderedDict()
        self._proven: OrderedDict[str, None] = OrderedDict()

    @property
    def unnamed(self) -> int:
        return len(self._unproven) + len(self._proven)

    @property
    def full(self) -> bool:
        return self.unnamed >= self.max_models

    def seen(self, model: str, events: int) -> None:
        """A watched unnamed model was seen; ``events`` counts all it has had, these too."""
        if model in self._proven:
            self._proven.move_to_end(model)
        elif model in self._unproven:
            if events >= self.admit_after_events:
                del self._unproven[model]
                self._proven[model] = None
            else:
                self._unproven.move_to_end(model)

    def admit_free(self, model: str, events: int) -> bool:
        """Admit ``model`` (not watched) if it is named or a slot is free."""
        if model in self.named:
            return True
        if self.full:
            return False
        self._enter(model, proven=events >= self.admit_after_events)
        return True

    def on_probation(self, models: list[str], counts: list[int], now: float) -> list[bool]:
        """Count the sightings of ids refused a free slot; whether each passed probation."""
        estimates = self.sketch.add(models, counts, now)
        return [estimate >= self.admit_after_events for estimate in estimates]

    def victim(
        self, evictable: Callable[[str], bool], last_seen: Callable[[str], float | None], now: float
    ) -> str | None:
        """The model to evict for a newcomer that passed probation, or None; removed from
        the rule's books (the caller drops its monitor and admits the newcomer with
        :meth:`replace`)."""
        found = self._search(self._unproven, evictable, lambda model: True)

        def silent(model: str) -> bool:
            seen = last_seen(model)
            return seen is None or now - seen >= self.evict_idle_s

        if found is None:
            found = self._search(self._proven, evictable, silent)
        return found

    def replace(self, victim: str, newcomer: str) -> None:
        self.forget(victim)
        self._enter(newcomer, proven=True)

    def adopt(self, model: str) -> bool:
        """Take a model restored from a checkpoint if it is named or a slot is free."""
        if model in self.named or model in self._proven or model in self._unproven:
            return True
        if self.full:
            return False
        self._enter(model, proven=True)
        return True

    def forget(self, model: str) -> None:
        self._unproven.pop(model, None)
        self._proven.pop(model, None)

    def _enter(self, model: str, *, proven: bool) -> None:
        (self._proven if proven else self._unproven)[model] = None

    def _search(
        self,
        order: OrderedDict[str, None],
        evictable: Callable[[str], bool],
        eligible: Callable[[str], bool],
    ) -> str | None:
        for _ in range(min(self.scan, len(order))):
            model = next(iter(order))
            if eligible(model) and evictable(model):
                del order[model]
                return model
            order.move_to_end(model)
        return None
