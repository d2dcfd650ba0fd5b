"""The notification rule of an incident: what is news for a sink.

Pure and without I/O. :class:`alerts.dispatcher.AlertDispatcher` applies it to every fire and
resolve, and the daemon's decision core (``monitor.actions.decisions``) applies the same rule
ahead of time, so the offline replay reports exactly the notifications the sinks get.
"""

from __future__ import annotations

import enum

from alerts.base import Alert

__all__ = ["Notification", "news", "notified_state"]


class Notification(enum.Enum):
    """What a sink is told about an incident."""

    #: The incident opens: the first page.
    FIRE = "fire"
    #: The open incident changed what a sink is told (state, severity or signals).
    UPDATE = "update"
    #: The incident is over.
    RESOLVE = "resolve"

    @property
    def action(self) -> str:
        """The sink-side action: an update is a fire of the same incident (same dedup key)."""
        return "resolve" if self is Notification.RESOLVE else "fire"


def notified_state(alert: Alert) -> tuple[str, str, tuple[str, ...]]:
    """What a sink is told about; a change of anything else is not worth a new notification."""
    return alert.state, alert.severity, alert.signals


def news(current: Alert | None, alert: Alert) -> Notification | None:
    """The notification ``alert`` is worth, given the incident's last notified alert
    (``current``, None when no incident of its model and alertname is open); None: not news.

    >>> from datetime import datetime
    >>> def a(state, severity="page", signals=("error_rate",), ends_at=None):
    ...     return Alert("m", "ModelUnhealthy", severity, state, signals, "s", "d", "",
    ...                  datetime(2024, 1, 1), ends_at=ends_at)
    >>> news(None, a("degraded")), news(a("degraded"), a("critical"))
    (<Notification.FIRE: 'fire'>, <Notification.UPDATE: 'update'>)
    >>> news(a("degraded"), a("degraded")) is None
    True
    >>> news(a("degraded"), a("degraded", signals=("error_rate", "psi")))
    <Notification.UPDATE: 'update'>
    >>> resolved = a("ok", ends_at=datetime(2024, 1, 2))
    >>> news(a("degraded"), resolved), news(None, resolved) is None
    (<Notification.RESOLVE: 'resolve'>, True)
    """
    if alert.resolved:
        return Notification.RESOLVE if current is not None else None
    if current is None:
        return Notification.FIRE
    if notified_state(current) == notified_state(alert):
        return None
    return Notification.UPDATE
