"""Waiting on a condition with a deadline, for the flag tests.

Polls every 50 ms up to a gross timeout and fails with the last value it saw.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.05


async def eventually(
    probe: Callable[[], T | Awaitable[T]],
    accept: Callable[[T], bool] = bool,
    *,
    timeout_s: float = 10.0,
    what: str = "condition",
) -> T:
    """Await ``probe()`` until ``accept`` holds on its result; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        value: T = await result if isinstance(result, Awaitable) else result  # type: ignore[assignment]
        if accept(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout_s}s; last value: {value!r}")
        await asyncio.sleep(POLL_S)
