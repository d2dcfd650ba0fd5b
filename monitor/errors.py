"""driftwarden's error tree, rooted at DriftwardenError.

Each error says whether retrying the same operation may succeed (``retriable``).
"""

from __future__ import annotations

__all__ = [
    "AlertSinkError",
    "BrokerUnavailableError",
    "ConfigError",
    "DriftwardenError",
    "FlagBackendError",
]


class DriftwardenError(RuntimeError):
    """Base class of every error driftwarden raises on purpose."""

    retriable = False


class ConfigError(DriftwardenError):
    """The settings or the policy file are invalid.

    ``problems`` holds one line per error: ``FILE: field.path: what was expected``.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class BrokerUnavailableError(DriftwardenError):
    """The Kafka broker did not answer within its deadline."""

    retriable = True


class FlagBackendError(DriftwardenError):
    """A flag backend refused or failed a read or write."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class AlertSinkError(DriftwardenError):
    """An alert sink refused or failed a delivery."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable
