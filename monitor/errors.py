"""driftwarden's error tree, rooted at DriftwardenError.

The root, ``ConfigError`` and ``AlertSinkError`` are defined in :mod:`alerts.errors` (alerts
imports nothing from monitor) and re-exported here, so both packages raise and catch the same
classes. Each error says whether retrying the same operation may succeed (``retriable``).
"""

from __future__ import annotations

from alerts.errors import AlertSinkError, ConfigError, DriftwardenError

__all__ = [
    "AlertSinkError",
    "BrokerUnavailableError",
    "ConfigError",
    "DriftwardenError",
    "FlagBackendError",
]


class BrokerUnavailableError(DriftwardenError):
    """The Kafka broker did not answer within its deadline."""

    retriable = True


class FlagBackendError(DriftwardenError):
    """A flag backend refused or failed a read or write."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable
