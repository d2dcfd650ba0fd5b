"""Capped exponential backoff with jitter, for retrying a dependency that is down (the Kafka
broker at start-up) without hammering it or flooding the log.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delays of ``first_s`` doubling up to ``max_s``, each scaled by a random factor in
    ``[1 - jitter, 1 + jitter]`` (never above ``max_s``) so that replicas restarted together
    do not retry in step.

    >>> delays = Backoff(first_s=1.0, max_s=30.0, jitter=0.0).delays()
    >>> [next(delays) for _ in range(7)]
    [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    """

    first_s: float = 1.0
    max_s: float = 30.0
    jitter: float = 0.2
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError("first_s must be positive and at most max_s.")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1).")

    def delays(self) -> Iterator[float]:
        """The delay before each retry, for ever (the caller decides when to give up)."""
        base = self.first_s
        while True:
            factor = 1.0 + self.jitter * (2.0 * self.random() - 1.0)
            yield min(self.max_s, base * factor)
            base = min(self.max_s, base * 2.0)
