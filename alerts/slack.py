"""The Slack incoming-webhook sink: one message per incident state change, in Block Kit.

The webhook URL is itself the secret (its path holds the token); it comes from the
environment and never appears in a log line, an error or a repr.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from alerts.base import Alert, format_values
from alerts.transport import HttpSink, HttpTransport

__all__ = ["SlackSink"]

log = logging.getLogger(__name__)

# Block Kit limits (https://api.slack.com/reference/block-kit/blocks).
_HEADER_MAX = 150
_SECTION_MAX = 3000
_FIELD_MAX = 2000

_ICON = {"resolved": ":large_green_circle:", "warn": ":large_yellow_circle:"}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SlackSink(HttpSink):
    """Post alerts to a Slack incoming webhook.

    Parameters
    ----------
    webhook_url
        The incoming webhook's URL (a secret: its path is the token).
    name
        The sink's name in metrics and logs.
    timeout_s
        Deadline of one POST.
    min_severity
        Alerts below this severity are not sent here.
    """

    def __init__(
        self,
        webhook_url: SecretStr,
        *,
        name: str = "slack",
        timeout_s: float = 10.0,
        min_severity: str = "info",
    ) -> None:
        if not webhook_url.get_secret_value():
            raise ValueError("webhook_url must not be empty.")
        url = webhook_url.get_secret_value()
        path = urlsplit(url).path
        # The token is the path: redact it alone too, since error pages often quote the path.
        secrets = [url, path] if len(path) > 1 else [url]
        super().__init__(name, timeout_s=timeout_s, min_severity=min_severity, secrets=secrets)
        self._webhook_url = webhook_url

    def __repr__(self) -> str:
        return f"SlackSink(name={self.name!r}, webhook_url=<secret>)"

    def message(self, alert: Alert) -> dict[str, Any]:
        """The webhook body: a ``text`` fallback for notifications plus the ``blocks``."""
        state = "resolved" if alert.resolved else alert.state
        icon = _ICON.get(state, ":red_circle:")
        title = f"{'RESOLVED' if alert.resolved else 'FIRING'}: {alert.model} {alert.alertname}"
        text = f"{title} ({state}, {alert.signal}): {alert.summary}"
        fields = [
            ("State", state),
            ("Severity", alert.severity),
            ("Signal", alert.signal or "n/a"),
            ("Value", format_values(alert)),
        ]
        blocks: list[dict[str, Any]] = [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": _clip(f"{icon} {title}", _HEADER_MAX)},
            },
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _clip(alert.summary or title, _SECTION_MAX)},
                "fields": [
                    {"type": "mrkdwn", "text": _clip(f"*{k}*\n{v}", _FIELD_MAX)} for k, v in fields
                ],
            },
        ]
        if alert.description:
            blocks.append(
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": _clip(alert.description, _SECTION_MAX)},
                }
            )
        if alert.runbook_url:
            blocks.append(
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": f"<{alert.runbook_url}|Runbook>"},
                }
            )
        return {"text": text, "blocks": blocks}

    async def send(self, alert: Alert) -> None:
        body = HttpTransport.encode(self.message(alert))
        await self._http.post(self._webhook_url.get_secret_value(), body)
        log.debug("slack %s: posted %s (%s)", self.name, alert.dedup_key, alert.state)
