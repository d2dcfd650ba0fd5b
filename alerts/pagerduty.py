"""The PagerDuty Events API v2 sink: trigger, acknowledge and resolve one incident per dedup_key.

The routing key comes from the environment (see :mod:`alerts.config`) and never leaves this
module except in the request body.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import SecretStr

from alerts.base import Alert
from alerts.transport import HttpSink, HttpTransport, rfc3339

__all__ = ["DEFAULT_EVENTS_URL", "PAGERDUTY_SEVERITY", "PagerDutySink"]

log = logging.getLogger(__name__)

DEFAULT_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"

#: Our severities to PagerDuty's. ``page`` is ``error`` because PagerDuty's dynamic urgency
#: treats ``critical`` and ``error`` as high urgency (a page) and the rest as low.
PAGERDUTY_SEVERITY = {
    "critical": "critical",
    "page": "error",
    "warning": "warning",
    "info": "info",
}
_SUMMARY_MAX = 1024


class PagerDutySink(HttpSink):
    """Send alerts as PagerDuty Events v2.

    The ``dedup_key`` is :attr:`Alert.dedup_key` (model and alertname), so re-triggering an open
    incident updates it instead of paging again.

    Parameters
    ----------
    routing_key
        The integration's routing key (a secret).
    url
        The Events API endpoint; tests point it at a local fake.
    name
        The sink's name in metrics and logs.
    source
        ``payload.source``: where the problem is, as PagerDuty shows it.
    timeout_s
        Deadline of one POST.
    min_severity
        Alerts below this severity are not sent here.
    """

    def __init__(
        self,
        routing_key: SecretStr,
        *,
        url: str = DEFAULT_EVENTS_URL,
        name: str = "pagerduty",
        source: str = "driftwarden",
        timeout_s: float = 10.0,
        min_severity: str = "info",
    ) -> None:
        if not routing_key.get_secret_value():
            raise ValueError("routing_key must not be empty.")
        super().__init__(
            name,
            timeout_s=timeout_s,
            min_severity=min_severity,
            secrets=[routing_key.get_secret_value()],
        )
        self.url = url
        self.source = source
        self._routing_key = routing_key

    def __repr__(self) -> str:
        return f"PagerDutySink(name={self.name!r}, url={self.url!r}, routing_key=<secret>)"

    def event(self, alert: Alert, action: str) -> dict[str, Any]:
        """The Events v2 body for ``action`` (``trigger``, ``acknowledge`` or ``resolve``)."""
        event: dict[str, Any] = {
            "routing_key": self._routing_key.get_secret_value(),
            "event_action": action,
            "dedup_key": alert.dedup_key,
        }
        if action != "trigger":
            return event
        summary = alert.summary or f"{alert.model}: {alert.alertname} ({alert.state})"
        event["payload"] = {
            "summary": summary[:_SUMMARY_MAX],
            "source": self.source,
            "severity": PAGERDUTY_SEVERITY.get(alert.severity, "critical"),
            "timestamp": rfc3339(alert.starts_at),
            "component": alert.model,
            "class": alert.signal or alert.alertname,
            "custom_details": {
                "state": alert.state,
                "severity": alert.severity,
                "signals": list(alert.signals),
                "values": dict(alert.values),
                "description": alert.description,
                "labels": dict(alert.labels),
            },
        }
        if alert.runbook_url:
            event["links"] = [{"href": alert.runbook_url, "text": "Runbook"}]
        return event

    async def send(self, alert: Alert) -> None:
        await self._post(alert, "resolve" if alert.resolved else "trigger")

    async def acknowledge(self, alert: Alert) -> None:
        await self._post(alert, "acknowledge")

    async def _post(self, alert: Alert, action: str) -> None:
        await self._http.post(self.url, HttpTransport.encode(self.event(alert, action)))
        log.debug("pagerduty %s: %s %s", self.name, action, alert.dedup_key)
