"""The outcome join: a delayed outcome event (``model``, ``request_id``, ``label``, no
``prediction``) meets the prediction of the same model and ``request_id`` seen earlier.

Pure, no I/O; the clock is the batch's wall clock (``now``), never an event's ``ts``. Each
model's :class:`OutcomeJoin` keeps its pending predictions bounded by count
(``outcomes.max_pending``), by age (``outcomes.horizon``) and by its share of the engine-wide
:class:`OutcomeBudget` (``engine.max_pending_outcomes``); docs/outcomes.md says why and what
each pending prediction costs.
"""

from __future__ import annotations

import enum
import hashlib
import math
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.config.policy import LABEL_SOURCES, ModelPolicy, OutcomePolicy
from monitor.engine.events import Event

__all__ = [
    "OutcomeBudget",
    "OutcomeCounts",
    "OutcomeJoin",
    "OutcomeResult",
    "Prediction",
    "expected_correctness",
    "label_matches",
    "request_key",
    "wants_join",
]

#: A kept prediction: a number or boolean as it came, a category as its text, or (a
#: category past :data:`MAX_KEPT_CATEGORY` characters) the 16-byte digest of its text.
Prediction = float | int | bool | str | bytes

#: Longer category texts are kept as a digest: a pending entry costs the same whatever the
#: sender puts in a prediction (the contract allows 1,024 characters).
MAX_KEPT_CATEGORY = 64

#: The weight of the newest value in the running accuracies shown on /status (about the
#: last 500 values).
RECENT_WEIGHT = 1.0 / 500.0


class OutcomeResult(enum.Enum):
    """What became of one outcome event; every outcome is exactly one of these."""

    #: Met its prediction, which then left the pending ones.
    JOINED = "joined"
    #: Its prediction was seen but had left: evicted by age (past the horizon) or by count.
    LATE = "late"
    #: No prediction of this ``request_id`` was seen (recently), or the join is off.
    UNMATCHED = "unmatched"
    #: Its prediction already met an outcome (or carried its own label).
    DUPLICATE = "duplicate"


class Eviction(enum.Enum):
    """Why a prediction left the join unmet; kept == joined + evicted + pending."""

    #: Past ``outcomes.horizon``.
    AGE = "age"
    #: Past ``outcomes.max_pending`` or the model's share of the engine-wide bound.
    COUNT = "count"
    #: A newer event of the same ``request_id`` (a prediction, or one with its own label).
    REPLACED = "replaced"


def request_key(request_id: str) -> bytes:
    """A fixed-size key for a request id of any length (8 bytes of BLAKE2b): stable across
    processes (a checkpoint keeps it), so a pending entry costs the same for a 1,024-character
    id; two of a model's pending ids collide with odds about n^2 / 2^65."""
    return hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def _category(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _category_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def label_matches(label: object, prediction: object) -> bool:
    """Whether ``label`` says ``prediction`` was right: a boolean or 0 / 1 label against a
    score (a probability of the positive class: ``>= 0.5`` is 1), numbers by value, anything
    else by its text.

    >>> label_matches(True, 0.8), label_matches(1, 0.8), label_matches(1, 1.0)
    (True, True, True)
    >>> label_matches(0, 0.8), label_matches(3, 3.5), label_matches("cat", "dog")
    (False, False, False)
    """
    if isinstance(prediction, bytes):
        return _category_digest(_category(label)) == prediction
    if (
        isinstance(label, bool)
        and isinstance(prediction, float | int)
        and not isinstance(prediction, bool)
    ):
        return label == (prediction >= 0.5)
    if isinstance(label, float | int) and isinstance(prediction, float | int):
        if label in (0, 1) and not isinstance(prediction, bool) and 0.0 < prediction < 1.0:
            # A 0 / 1 outcome (JSON numbers) of a score: before, always "wrong".
            return (label == 1) == (prediction >= 0.5)
        return float(label) == float(prediction)
    return _category(label) == _category(prediction)


def regression_error(label: object, prediction: object, relative: bool) -> float:
    """``|label - prediction|`` (over ``|label|`` when ``relative``); NaN unless both are
    numbers (booleans are classes, not numbers) and, relative, the label is not 0.

    >>> regression_error(10.0, 12.5, False), regression_error(10.0, 12.5, True)
    (2.5, 0.25)
    """
    if (
        isinstance(label, bool)
        or isinstance(prediction, bool)
        or not isinstance(label, float | int)
        or not isinstance(prediction, float | int)
    ):
        return math.nan
    error = abs(float(label) - float(prediction))
    if relative:
        return error / abs(label) if label != 0 else math.nan
    return error


def expected_correctness(confidence: float | None, prediction: object) -> float:
    """The chance a prediction is right, assuming calibrated confidence (CBPE): the event's
    ``confidence`` (that of the predicted class); without one, a score in ``[0, 1]`` read as
    the probability of the positive class, ``max(p, 1 - p)``. NaN when neither applies.

    >>> expected_correctness(0.9, "cat"), expected_correctness(None, 0.2)
    (0.9, 0.8)
    """
    if confidence is not None:
        return min(max(confidence, 0.0), 1.0)
    if (
        isinstance(prediction, float | int)
        and not isinstance(prediction, bool)
        and 0.0 <= prediction <= 1.0
    ):
        return max(float(prediction), 1.0 - float(prediction))
    return math.nan


def wants_join(policy: ModelPolicy) -> bool:
    """Whether a model keeps its predictions from its first event: ``join: on``, or
    ``auto`` with a label signal named."""
    mode = policy.outcomes.join
    if mode != "auto":
        return mode == "on"
    return any(signal.source in LABEL_SOURCES for signal in policy.signals)


class OutcomeBudget:
    """The engine-wide bound on pending predictions: each joining model may keep at most
    ``total`` divided by the number of joining models (and its own ``max_pending``), so
    1,000 models keep at most ``total`` together, whatever their policies say."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("total must be at least 1.")
        self.total = total
        self._joins: weakref.WeakSet[OutcomeJoin] = weakref.WeakSet()

    @property
    def share(self) -> int:
        return max(1, self.total // max(1, len(self._joins)))

    def enlist(self, join: OutcomeJoin, now: float) -> None:
        """Count ``join`` in; every join then trims itself to the smaller share at once (each
        prediction is evicted at most once: the cost is spread over the entries kept)."""
        if join in self._joins:
            return
        self._joins.add(join)
        for other in list(self._joins):
            other.trim(now)

    def pending(self) -> int:
        return sum(len(join.pending) for join in self._joins)


@dataclass(slots=True)
class OutcomeCounts:
    """What a model's join did, since the model started (checkpointed)."""

    outcomes: dict[OutcomeResult, int] = field(
        default_factory=lambda: dict.fromkeys(OutcomeResult, 0)
    )
    evicted: dict[Eviction, int] = field(default_factory=lambda: dict.fromkeys(Eviction, 0))
    #: Predictions kept for the join.
    kept: int = 0
    #: Predictions seen with a ``confidence`` (discovery's estimated accuracy needs one).
    confident: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "outcomes": {r.value: n for r, n in self.outcomes.items()},
            "evicted": {e.value: n for e, n in self.evicted.items()},
            "kept": self.kept,
            "confident": self.confident,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> OutcomeCounts:
        counts = cls()
        for result in OutcomeResult:
            counts.outcomes[result] = int(raw["outcomes"].get(result.value, 0))
        for eviction in Eviction:
            counts.evicted[eviction] = int(raw["evicted"].get(eviction.value, 0))
        counts.kept = int(raw.get("kept", 0))
        counts.confident = int(raw.get("confident", 0))
        return counts


@dataclass(slots=True)
class RunningRate:
    """A mean over everything, and one weighted toward the last ~500 values."""

    n: int = 0
    total: float = 0.0
    recent: float = math.nan

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        recent = self.recent
        self.recent = value if recent != recent else recent + RECENT_WEIGHT * (value - recent)

    def add_many(self, n: int, total: float) -> None:
        """``n`` values summing to ``total`` at once: the recent mean moves toward their mean
        as far as ``n`` single steps would toward values all equal to it."""
        self.n += n
        self.total += total
        mean = total / n
        recent = self.recent
        if recent != recent:
            self.recent = mean
        else:
            self.recent = recent + (1.0 - (1.0 - RECENT_WEIGHT) ** n) * (mean - recent)

    def to_json(self) -> list[float]:
        return [self.n, self.total, self.recent]

    @classmethod
    def from_json(cls, raw: list[float]) -> RunningRate:
        return cls(int(raw[0]), float(raw[1]), float(raw[2]))

    def describe(self) -> dict[str, Any] | None:
        if not self.n:
            return None
        return {"n": self.n, "mean": self.total / self.n, "recent": self.recent}


class OutcomeJoin:
    """One model's pending predictions and what its outcomes met.

    ``pending`` maps a request's key to its prediction and when it was kept, oldest first;
    ``gone`` remembers (bounded like ``pending``) the keys that left it, joined (True) or
    evicted (False), which tells a duplicate or a late outcome from an unmatched one.

    >>> join = OutcomeJoin(OutcomePolicy(horizon="1m", max_pending=2))
    >>> p = lambda rid, y: Event(model="m", request_id=rid, prediction=y)
    >>> o = lambda rid, y: Event(model="m", request_id=rid, label=y)
    >>> join.observe([p("a", 1), p("b", 0), p("c", 1)], 0, 3, now=0.0)  # "a" evicted by count
    {}
    >>> join.observe([o("b", 0), o("b", 0), o("a", 1), o("x", 1)], 0, 4, now=10.0)
    {0: 0}
    >>> {r.value: n for r, n in join.counts.outcomes.items()}
    {'joined': 1, 'late': 1, 'unmatched': 1, 'duplicate': 1}
    """

    __slots__ = (
        "__weakref__",
        "baseline",
        "budget",
        "counts",
        "estimated",
        "gone",
        "horizon_s",
        "max_pending",
        "pending",
        "realized",
    )

    def __init__(self, policy: OutcomePolicy, budget: OutcomeBudget | None = None) -> None:
        self.horizon_s = policy.horizon
        self.max_pending = policy.max_pending
        self.budget = budget
        self.pending: OrderedDict[bytes, tuple[Prediction, float]] = OrderedDict()
        self.gone: OrderedDict[bytes, bool] = OrderedDict()
        self.counts = OutcomeCounts()
        #: Expected correctness of predictions (CBPE) and realized correctness of joined
        #: classification outcomes: /status compares the two.
        self.estimated = RunningRate()
        self.realized = RunningRate()
        #: The counts this process started from (a checkpoint's): /metrics counts from them.
        self.baseline = OutcomeCounts()

    @property
    def limit(self) -> int:
        """Predictions this model may keep now: its own bound, or its budget share."""
        budget = self.budget
        return self.max_pending if budget is None else min(self.max_pending, budget.share)

    def _forget(self, key: bytes, joined: bool) -> None:
        gone = self.gone
        gone[key] = joined
        gone.move_to_end(key)
        if len(gone) > self.max_pending:
            gone.popitem(last=False)

    def trim(self, now: float) -> None:
        """Evict predictions past the horizon, then the oldest past the limit."""
        pending = self.pending
        evicted = self.counts.evicted
        oldest = now - self.horizon_s
        while pending:
            key, (_, seen_at) = next(iter(pending.items()))
            if seen_at >= oldest:
                break
            pending.popitem(last=False)
            evicted[Eviction.AGE] += 1
            self._forget(key, False)
        limit = self.limit
        while len(pending) > limit:
            key, _ = pending.popitem(last=False)
            evicted[Eviction.COUNT] += 1
            self._forget(key, False)

    def observe(self, events: Sequence[Event], start: int, end: int, now: float) -> dict[int, Any]:
        """Take ``events[start:end]`` (one model's, in order): keep each prediction that has a
        ``request_id``, join each outcome. Returns, by index into ``events``, the prediction
        each joined outcome met (the label-based columns read it beside the label)."""
        self.trim(now)
        pending = self.pending
        counts = self.counts
        outcomes = counts.outcomes
        realized = self.realized
        joined: dict[int, Any] = {}
        kept_now = confident = estimated_n = 0
        estimated_sum = 0.0
        blake2b = hashlib.blake2b
        for i in range(start, end):
            event = events[i]
            prediction = event.prediction
            if prediction is not None:
                # The expected correctness (CBPE) of every prediction, for /status, summed
                # here rather than per event through expected_correctness (the hot path).
                confidence = event.confidence
                if confidence is not None:
                    confident += 1
                    estimated_n += 1
                    estimated_sum += min(max(confidence, 0.0), 1.0)
                elif type(prediction) is float and 0.0 <= prediction <= 1.0:
                    estimated_n += 1
                    estimated_sum += prediction if prediction >= 0.5 else 1.0 - prediction
            request_id = event.request_id
            label = event.label
            if request_id is None:
                if label is not None and prediction is None:
                    outcomes[OutcomeResult.UNMATCHED] += 1  # an outcome with nothing to join on
                continue
            if prediction is not None:
                key = blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
                if label is not None:
                    # Self-contained: its label counts where it is; an outcome for it later
                    # would count it twice.
                    if _classified(label):
                        realized.add(1.0 if label_matches(label, prediction) else 0.0)
                    if pending.pop(key, None) is not None:
                        counts.evicted[Eviction.REPLACED] += 1
                    self._forget(key, True)
                    continue
                if key in pending:
                    counts.evicted[Eviction.REPLACED] += 1
                    pending.move_to_end(key)
                value: Prediction = prediction
                if type(prediction) is str and len(prediction) > MAX_KEPT_CATEGORY:
                    value = _category_digest(prediction)
                pending[key] = (value, now)
                kept_now += 1
                continue
            if label is None:
                continue
            key = blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
            found = pending.pop(key, None)
            if found is not None:
                outcomes[OutcomeResult.JOINED] += 1
                joined[i] = found[0]
                self._forget(key, True)
                if _classified(label):
                    realized.add(1.0 if label_matches(label, found[0]) else 0.0)
                continue
            was = self.gone.get(key)
            if was is None:
                outcomes[OutcomeResult.UNMATCHED] += 1
            elif was:
                outcomes[OutcomeResult.DUPLICATE] += 1
            else:
                outcomes[OutcomeResult.LATE] += 1
        if estimated_n:
            self.estimated.add_many(estimated_n, estimated_sum)
        counts.confident += confident
        if kept_now:
            counts.kept += kept_now
            if len(pending) > self.limit:
                self.trim(now)
        return joined

    def describe(self) -> dict[str, Any]:
        """The JSON shape of the join for /status."""
        counts = self.counts
        return {
            "pending": len(self.pending),
            "limit": self.limit,
            "horizon_s": self.horizon_s,
            "kept": counts.kept,
            "outcomes": {r.value: n for r, n in counts.outcomes.items()},
            "evicted": {e.value: n for e, n in counts.evicted.items()},
            "accuracy": {
                "estimated": self.estimated.describe(),
                "realized": self.realized.describe(),
            },
        }

    def to_state(self) -> dict[str, Any]:
        """Everything the join holds, compact: keys and times as packed arrays (16 bytes an
        entry), predictions as they are kept."""
        pending = self.pending
        gone = self.gone
        return {
            "keys": b"".join(pending.keys()),
            "seen": array("d", (seen for _, seen in pending.values())).tobytes(),
            "predictions": [prediction for prediction, _ in pending.values()],
            "gone": b"".join(gone.keys()),
            "gone_joined": bytes(gone.values()),
            "counts": self.counts.to_json(),
            "estimated": self.estimated.to_json(),
            "realized": self.realized.to_json(),
        }

    @classmethod
    def from_state(
        cls, raw: dict[str, Any], policy: OutcomePolicy, budget: OutcomeBudget | None = None
    ) -> OutcomeJoin:
        """A join continuing from :meth:`to_state` (trimmed to ``policy``'s bounds at the next
        batch); ValueError names what is malformed."""
        join = cls(policy, budget)
        try:
            keys = _keys(raw["keys"])
            seen = array("d", raw["seen"])
            predictions = list(raw["predictions"])
            gone = _keys(raw["gone"])
            gone_joined = bytes(raw["gone_joined"])
            if not len(keys) == len(seen) == len(predictions) or len(gone) != len(gone_joined):
                raise ValueError("pending keys, times and predictions differ in length")
            for prediction in predictions:
                if not isinstance(prediction, float | int | bool | str | bytes):
                    raise ValueError(f"a pending prediction is {type(prediction).__name__}")
            join.pending = OrderedDict(zip(keys, zip(predictions, seen, strict=True), strict=True))
            join.gone = OrderedDict(zip(gone, map(bool, gone_joined), strict=True))
            join.counts = OutcomeCounts.from_json(raw["counts"])
            join.baseline = OutcomeCounts.from_json(raw["counts"])
            join.estimated = RunningRate.from_json(raw["estimated"])
            join.realized = RunningRate.from_json(raw["realized"])
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            raise ValueError(f"outcome join state is malformed: {err!r}") from err
        return join


def _keys(packed: bytes) -> list[bytes]:
    if not isinstance(packed, bytes) or len(packed) % 8:
        raise ValueError("packed keys are not a multiple of 8 bytes")
    return [packed[i : i + 8] for i in range(0, len(packed), 8)]


def _classified(label: object) -> bool:
    """A label of a classifier (a class or a 0/1 outcome), not a regression target."""
    return isinstance(label, bool | str) or label in (0, 1)
