"""The flag backend protocol: read and set a feature flag, idempotently.

Backends know nothing of health; the actuator in ``monitor/flags/actuator.py`` queues and
retries their writes so a backend that is down never blocks consumption.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["FlagBackend", "FlagValue"]

FlagValue = bool | str | int | float


@runtime_checkable
class FlagBackend(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def get(self, flag: str) -> FlagValue | None:
        """The flag's current value, or None when the backend has no such flag."""
        ...

    async def set(self, flag: str, value: FlagValue) -> None:
        """Set the flag; a no-op when it already holds ``value``.

        Raise ``FlagBackendError`` (retriable or not) on failure.
        """
        ...
