"""The Alert every sink receives, and the sink protocol.

An Alert is one incident of one model: it fires once when the model's health breaks and is
resolved (``ends_at`` set) when the model recovers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

__all__ = [
    "SEVERITIES",
    "AcknowledgingSink",
    "Alert",
    "AlertSink",
    "ResendingSink",
    "format_values",
    "severity_rank",
]

#: Alert severities, least urgent first; a sink's ``min_severity`` filters on this order.
SEVERITIES = ("info", "warning", "page", "critical")


def severity_rank(severity: str) -> int:
    """Position of ``severity`` in :data:`SEVERITIES`; an unknown severity ranks as the highest.

    >>> severity_rank("info") < severity_rank("page") < severity_rank("unheard-of")
    True
    """
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        # Paging on a typo beats silently dropping it.
        return len(SEVERITIES)


@dataclass(frozen=True, slots=True)
class Alert:
    """One incident, as every sink sees it.

    ``severity`` is the policy's alert severity (``info``, ``warning``, ``page``, ``critical``);
    ``state`` the model's health state (``warn``, ``degraded``, ``critical``). ``signals`` name
    the signals that caused it and ``values`` their statistics at the transition.
    """

    model: str
    alertname: str
    severity: str
    state: str
    signals: tuple[str, ...]
    summary: str
    description: str
    runbook_url: str
    starts_at: datetime
    ends_at: datetime | None = None
    values: dict[str, float] = field(default_factory=dict)
    #: Extra labels (e.g. the model version); never secrets.
    labels: dict[str, str] = field(default_factory=dict)
    #: Identifies one notification of an incident (incident id and sequence number): a
    #: notification re-sent after a crash carries the same key, so a receiver that dedupes
    #: on it sees it once. None for driftwarden's own alerts (sink or backend down).
    idempotency_key: str | None = None

    @property
    def resolved(self) -> bool:
        return self.ends_at is not None

    @property
    def dedup_key(self) -> str:
        """Stable per model and alert: one incident is one page."""
        return f"driftwarden/{self.model}/{self.alertname}"

    @property
    def signal(self) -> str:
        return ",".join(self.signals)


@runtime_checkable
class AlertSink(Protocol):
    """A destination for alerts. ``send`` is idempotent for the same alert and status."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, alert: Alert) -> None:
        """Deliver one alert; raise ``AlertSinkError`` (retriable or not) on failure."""
        ...


@runtime_checkable
class ResendingSink(AlertSink, Protocol):
    """A sink that forgets firing alerts it stops hearing about (Alertmanager).

    The dispatcher re-sends each firing alert to it every ``resend_interval_s`` until resolved.
    """

    resend_interval_s: float


@runtime_checkable
class AcknowledgingSink(AlertSink, Protocol):
    """A sink whose incidents can be acknowledged (PagerDuty)."""

    async def acknowledge(self, alert: Alert) -> None:
        """Acknowledge the open incident of ``alert``; raise ``AlertSinkError`` on failure."""
        ...


def format_values(alert: Alert) -> str:
    """The signals' statistics as one short line.

    >>> from datetime import datetime
    >>> a = Alert("m", "Drift", "page", "degraded", ("psi", "latency_p99"), "s", "d", "",
    ...           datetime(2024, 1, 1), values={"psi": 0.31234, "latency_p99": 812.0})
    >>> format_values(a)
    'psi=0.3123, latency_p99=812'
    """
    if not alert.values:
        return "n/a"
    return ", ".join(f"{k}={v:.4g}" for k, v in alert.values.items())
