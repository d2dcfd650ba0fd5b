"""Waiting on a condition with a deadline: the tests' one polling helper.

``wait_for`` (in a coroutine) and ``wait_for_sync`` (in blocking code: fixtures that start a
server, helpers run in a thread) poll a condition until it holds and fail the test, naming what
was awaited, once the deadline passes. A condition that can tell the wait is hopeless (the
process under test exited) raises, and the wait ends at once with its error. ``tests/conftest``
re-exports ``wait_for`` (``from tests.conftest import wait_for``); modules that conftest itself
imports (``tests/services``) take it from here.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import pytest

__all__ = ["wait_for", "wait_for_sync"]

Description = str | Callable[[], str]


class _Deadline:
    """The clock of one wait: when it started, when it gives up and how it says so."""

    def __init__(self, timeout: float, what: Description) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}.")
        self.timeout = timeout
        self.what = what
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def check(self) -> None:
        """Fail the test once the deadline has passed (the condition was checked last)."""
        if self.elapsed() > self.timeout:
            described = self.what() if callable(self.what) else self.what
            pytest.fail(f"timed out after {self.timeout}s waiting for {described}")


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: Description = "condition",
) -> float:
    """Poll ``condition`` (sync or async) every ``interval`` until true; return the seconds it
    took. Fails the test after ``timeout``; ``what`` (or what it returns, read at the failure,
    e.g. the last value seen) names the condition in the message."""
    deadline = _Deadline(timeout, what)
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return deadline.elapsed()
        deadline.check()
        await asyncio.sleep(interval)


def wait_for_sync(
    condition: Callable[[], bool],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: Description = "condition",
) -> float:
    """``wait_for`` for blocking code: the same deadline and failure, sleeping the thread."""
    deadline = _Deadline(timeout, what)
    while True:
        if condition():
            return deadline.elapsed()
        deadline.check()
        time.sleep(interval)
