"""The generic webhook sink: the alert as JSON, signed with HMAC-SHA256 over the exact body.

Receivers check ``X-Driftwarden-Signature: sha256=<hex>`` with :func:`verify_signature`; the
body carries ``sent_at`` (also in ``X-Driftwarden-Timestamp``) so the signature covers it.
Each model notification carries an ``Idempotency-Key`` header (and ``idempotency_key`` in the
body), the same on every re-send of that notification, so a receiver can drop duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

from pydantic import SecretStr

from alerts.base import Alert
from alerts.transport import HttpSink, HttpTransport, rfc3339

__all__ = [
    "IDEMPOTENCY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookSink",
    "sign",
    "verify_signature",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Driftwarden-Signature"
TIMESTAMP_HEADER = "X-Driftwarden-Timestamp"
#: Same value for every attempt of one notification, across restarts: the receiver dedupes.
IDEMPOTENCY_HEADER = "Idempotency-Key"
PAYLOAD_VERSION = "1"


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``.

    >>> sign(b"s3cret", b'{"a":1}')[:15]
    'sha256=5910e620'
    """
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (constant time).

    >>> verify_signature(b"s3cret", b"{}", sign(b"s3cret", b"{}"))
    True
    >>> verify_signature(b"other", b"{}", sign(b"s3cret", b"{}"))
    False
    """
    return hmac.compare_digest(sign(secret, body), header)


class WebhookSink(HttpSink):
    """POST each alert as signed JSON to an HTTP endpoint.

    Parameters
    ----------
    url
        Where to POST.
    secret
        The HMAC-SHA256 key shared with the receiver.
    name
        The sink's name in metrics and logs.
    timeout_s
        Deadline of one POST.
    min_severity
        Alerts below this severity are not sent here.
    """

    def __init__(
        self,
        url: str,
        secret: SecretStr,
        *,
        name: str = "webhook",
        timeout_s: float = 10.0,
        min_severity: str = "info",
    ) -> None:
        if not secret.get_secret_value():
            raise ValueError("secret must not be empty.")
        super().__init__(
            name,
            timeout_s=timeout_s,
            min_severity=min_severity,
            secrets=[secret.get_secret_value()],
        )
        self.url = url
        self._secret = secret

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r}, url={self.url!r}, secret=<secret>)"

    @staticmethod
    def document(alert: Alert, sent_at: int) -> dict[str, Any]:
        """The JSON document posted for ``alert``."""
        return {
            "version": PAYLOAD_VERSION,
            "status": "resolved" if alert.resolved else "firing",
            "sent_at": sent_at,
            "dedup_key": alert.dedup_key,
            "idempotency_key": alert.idempotency_key,
            "alert": {
                "model": alert.model,
                "alertname": alert.alertname,
                "severity": alert.severity,
                "state": alert.state,
                "signals": list(alert.signals),
                "values": dict(alert.values),
                "summary": alert.summary,
                "description": alert.description,
                "runbook_url": alert.runbook_url,
                "starts_at": rfc3339(alert.starts_at),
                "ends_at": rfc3339(alert.ends_at) if alert.ends_at is not None else None,
                "labels": dict(alert.labels),
            },
        }

    async def send(self, alert: Alert) -> None:
        sent_at = int(time.time())
        body = HttpTransport.encode(self.document(alert, sent_at))
        headers = {
            SIGNATURE_HEADER: sign(self._secret.get_secret_value().encode(), body),
            TIMESTAMP_HEADER: str(sent_at),
        }
        if alert.idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = alert.idempotency_key
        await self._http.post(self.url, body, headers)
        log.debug("webhook %s: posted %s", self.name, alert.dedup_key)
