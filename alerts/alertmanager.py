"""The Alertmanager v2 sink: POST /api/v2/alerts, re-sent while firing, resolved with endsAt.

Labels are ``alertname``, ``model``, ``signal``, ``severity`` (plus the alert's own labels);
annotations ``summary``, ``description``, ``runbook_url`` and ``state``.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from alerts.base import Alert
from alerts.transport import HttpSink, HttpTransport, rfc3339

__all__ = ["AlertmanagerSink"]

log = logging.getLogger(__name__)

_LABEL_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _label_name(name: str) -> str:
    """Alertmanager rejects the whole POST on one invalid label name, so coerce it.

    >>> _label_name("model.version"), _label_name("2x")
    ('model_version', '_2x')
    """
    name = _LABEL_NAME.sub("_", name)
    return f"_{name}" if name[:1].isdigit() else name


class AlertmanagerSink(HttpSink):
    """Post alerts to Alertmanager's v2 API.

    Alertmanager resolves an alert it has not heard about for its ``resolve_timeout``, so the
    dispatcher re-sends firing alerts every ``resend_interval_s`` (see
    :class:`alerts.base.ResendingSink`). When an incident's labels change while it fires (its
    severity rises, say), the old label set is resolved in the same POST so that it does not
    linger as a second alert.

    Parameters
    ----------
    url
        Alertmanager's base URL, e.g. ``http://alertmanager:9093``.
    name
        The sink's name in metrics and logs.
    resend_interval_s
        How often the dispatcher re-sends a firing alert.
    generator_url
        Link shown as the alert's source (e.g. driftwarden's ``/status``); optional.
    bearer_token
        Sent as ``Authorization: Bearer`` when Alertmanager sits behind an authenticating proxy.
    timeout_s
        Deadline of one POST.
    min_severity
        Alerts below this severity are not sent here.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "alertmanager",
        resend_interval_s: float = 60.0,
        generator_url: str | None = None,
        bearer_token: SecretStr | None = None,
        timeout_s: float = 10.0,
        min_severity: str = "info",
    ) -> None:
        if resend_interval_s <= 0:
            raise ValueError("resend_interval_s must be positive.")
        secrets = [bearer_token.get_secret_value()] if bearer_token is not None else []
        super().__init__(name, timeout_s=timeout_s, min_severity=min_severity, secrets=secrets)
        self.url = url.rstrip("/")
        self.resend_interval_s = resend_interval_s
        self.generator_url = generator_url
        self._bearer_token = bearer_token
        # Label set last posted per incident, to resolve it when the labels change.
        self._posted: dict[str, dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"AlertmanagerSink(name={self.name!r}, url={self.url!r})"

    def labels(self, alert: Alert) -> dict[str, str]:
        """The label set that identifies ``alert`` in Alertmanager; our four labels win."""
        labels = {_label_name(k): v for k, v in alert.labels.items()}
        labels.update(
            alertname=alert.alertname,
            model=alert.model,
            signal=alert.signal,
            severity=alert.severity,
        )
        # Alertmanager treats an empty label as absent; dropping it keeps hashes stable.
        return {k: v for k, v in labels.items() if v}

    def payload(self, alert: Alert) -> list[dict[str, Any]]:
        """The JSON body posted for ``alert`` (a list, as the v2 API expects)."""
        labels = self.labels(alert)
        entries = [self._entry(alert, labels, alert.ends_at)]
        previous = self._posted.get(alert.dedup_key)
        if previous is not None and previous != labels:
            entries.append(self._entry(alert, previous, alert.ends_at or datetime.now(UTC)))
        return entries

    def _entry(
        self, alert: Alert, labels: dict[str, str], ends_at: datetime | None
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "labels": labels,
            "annotations": {
                "summary": alert.summary,
                "description": alert.description,
                "runbook_url": alert.runbook_url,
                "state": alert.state,
            },
            "startsAt": rfc3339(alert.starts_at),
        }
        # Without endsAt Alertmanager keeps a firing alert for its resolve_timeout.
        if ends_at is not None:
            entry["endsAt"] = rfc3339(ends_at)
        if self.generator_url:
            entry["generatorURL"] = self.generator_url
        return entry

    async def send(self, alert: Alert) -> None:
        headers = {}
        if self._bearer_token is not None:
            headers["Authorization"] = f"Bearer {self._bearer_token.get_secret_value()}"
        body = HttpTransport.encode(self.payload(alert))
        await self._http.post(f"{self.url}/api/v2/alerts", body, headers)
        if alert.resolved:
            self._posted.pop(alert.dedup_key, None)
        else:
            self._posted[alert.dedup_key] = self.labels(alert)
        log.debug("alertmanager %s: posted %s (%s)", self.name, alert.dedup_key, alert.state)
