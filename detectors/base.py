"""The one small interface every detector implements, and the Reading it reports.

A detector watches one stream of values and reports, after each update, a Reading.
"""

from __future__ import annotations

import abc
import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict

from detectors.serialization import pack

__all__ = [
    "INCONCLUSIVE",
    "BaseDetector",
    "Detector",
    "DetectorSpecBase",
    "InputKind",
    "Reading",
    "SpecT",
    "Verdict",
]

#: Version of the checkpoint layout written by :meth:`BaseDetector.to_bytes`.
STATE_VERSION = 1


class InputKind(enum.Enum):
    """What a detector reads: the daemon feeds each kind in its own container."""

    #: ``numpy.ndarray`` of float64, NaN = missing.
    NUMERIC = "numeric"
    #: ``list[str]``, None = missing.
    CATEGORICAL = "categorical"
    #: ``numpy.ndarray`` of float64 holding 0.0 / 1.0, NaN = missing.
    BINARY = "binary"
    #: 2-D ``numpy.ndarray`` of float64, shape (n, d).
    MULTIVARIATE = "multivariate"


class DetectorSpecBase(BaseModel):
    """A policy's ``detector:`` block: strict (an unknown field is an error) and frozen.

    Each detector module defines its spec next to its detector, with a ``type`` Literal
    field (the policy's name, the union's discriminator) and the ``input_kind`` it reads;
    ``detectors.registry`` gathers them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: What the detector reads; fixed per spec class.
    input_kind: ClassVar[InputKind]

    if TYPE_CHECKING:
        # Declared for the type checker only: a field here would move ``type`` first in
        # every spec's JSON, and a checkpoint's spec digest is a hash of that JSON.
        type: str


#: The spec type of a detector: a detector class is generic over it.
SpecT = TypeVar("SpecT", bound=DetectorSpecBase)


class Verdict(enum.Enum):
    """What a detector concludes about its stream right now."""

    OK = "ok"
    #: The distribution moved away from the reference (material and persistent).
    DRIFT = "drift"
    #: Values are anomalous, or an absolute limit (SLO, rate) is breached.
    ANOMALY = "anomaly"
    #: Not enough data (too few samples, no traffic, NaN): neither a pass nor a fail.
    INCONCLUSIVE = "inconclusive"


@dataclass(slots=True, frozen=True)
class Reading:
    """One detector's report after an update.

    Parameters
    ----------
    statistic
        The monitored quantity: a test statistic, a rate, a quantile, a divergence.
    effect
        Effect size of the change (standardized shift, PSI, rate difference); NaN if none.
    verdict
        The detector's conclusion.
    samples
        How many samples the verdict rests on (the current window).
    threshold
        The decision boundary ``statistic`` is compared with; NaN if the detector has none.
    """

    statistic: float
    effect: float
    verdict: Verdict
    samples: int
    threshold: float = math.nan

    @property
    def breached(self) -> bool:
        return self.verdict is Verdict.DRIFT or self.verdict is Verdict.ANOMALY


INCONCLUSIVE = Reading(math.nan, math.nan, Verdict.INCONCLUSIVE, 0)


@runtime_checkable
class Detector(Protocol):
    """The detector protocol.

    ``update`` takes one value, ``update_many`` a batch (a numpy array for numeric and
    binary streams, a list of strings for categorical ones, a 2-D array for multivariate
    detectors); both return the Reading after the last value. A verdict that fired
    anywhere inside the batch is reported, never lost to a later value of the batch.
    """

    def update(self, value: Any) -> Reading: ...

    def update_many(self, values: Any) -> Reading: ...

    def reading(self) -> Reading:
        """The latest Reading without updating."""
        ...

    def events_until_test(self) -> int | None:
        """How many more values end a stride (run a test), when nothing but a test can change
        the Reading; None when any value may (the reference or window still fills)."""
        ...

    def reset(self) -> None: ...

    def to_bytes(self) -> bytes:
        """The full state, for checkpoints; ``from_bytes`` restores it exactly."""
        ...


class BaseDetector(abc.ABC, Generic[SpecT]):
    """Shared plumbing of driftwarden's detectors: spec, last Reading and checkpoints.

    Generic over its spec type: a detector accepts its own spec and no other. Subclasses
    implement ``update_many``, ``reset`` and the ``_state`` / ``_load`` pair, and name their
    spec class in ``spec_class``; ``detectors.registry.restore_detector`` rebuilds any of
    them from ``to_bytes()``.
    """

    #: The spec class this detector is built from (the registry's key).
    spec_class: ClassVar[type[DetectorSpecBase]]

    def __init__(self, spec: SpecT, *, family_size: int = 1, seed: int = 0) -> None:
        if family_size < 1:
            raise ValueError(f"family_size must be at least 1, got {family_size}")
        self.spec: SpecT = spec
        self.family_size = family_size
        self.seed = seed
        self._last = INCONCLUSIVE

    @classmethod
    def variant_for(cls, spec: SpecT) -> type[BaseDetector[SpecT]]:
        """The class that runs ``spec``: this one, or a variant for a capability the spec
        asks for (an absolute limit, say). The registry builds through it."""
        return cls

    def update(self, value: Any) -> Reading:
        return self.update_many(np.array([value], dtype=np.float64))

    @abc.abstractmethod
    def update_many(self, values: Any) -> Reading: ...

    def reading(self) -> Reading:
        return self._last

    def events_until_test(self) -> int | None:
        return None

    @abc.abstractmethod
    def reset(self) -> None: ...

    @abc.abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _load(self, state: dict[str, Any]) -> None: ...

    def to_bytes(self) -> bytes:
        return pack(
            {
                "v": STATE_VERSION,
                "spec": self.spec.model_dump(mode="json"),
                "family_size": self.family_size,
                "seed": self.seed,
                "last": [
                    self._last.statistic,
                    self._last.effect,
                    self._last.verdict.value,
                    self._last.samples,
                    self._last.threshold,
                ],
                "state": self._state(),
            }
        )

    def _load_last(self, raw: list[Any]) -> None:
        stat, effect, verdict, samples, threshold = raw
        self._last = Reading(
            float(stat), float(effect), Verdict(verdict), int(samples), float(threshold)
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, family_size={self.family_size})"
