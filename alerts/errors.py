"""The root of driftwarden's error tree and the errors the alert sinks raise.

``alerts`` sits at the bottom of the package graph (``monitor`` imports it, never the other
way), so the root class and the two errors both packages raise live here; :mod:`monitor.errors`
re-exports them and adds the daemon's own. One class per error, whichever package names it:
``except monitor.errors.ConfigError`` catches a missing sink secret exactly as it did when the
class was defined in ``monitor``.

Each error says whether retrying the same operation may succeed (``retriable``).
"""

from __future__ import annotations

__all__ = ["AlertSinkError", "ConfigError", "DriftwardenError"]


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


class AlertSinkError(DriftwardenError):
    """An alert sink refused or failed a delivery."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable
