"""The HTTP transport and base class the Alertmanager, PagerDuty, Slack and webhook sinks share.

It owns one aiohttp session per sink, the timeout, the mapping of HTTP outcomes to
``AlertSinkError`` (retriable or not) and the redaction of secrets from every error message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from alerts.errors import AlertSinkError

__all__ = ["HttpSink", "HttpTransport", "rfc3339"]

log = logging.getLogger(__name__)

#: Statuses worth retrying: throttled, or the server's fault. Every other non-2xx is our fault
#: (bad payload, bad key) and repeating the same request cannot succeed.
RETRIABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_BODY_EXCERPT = 200


def rfc3339(ts: datetime) -> str:
    """Format ``ts`` as RFC 3339 in UTC; a naive datetime is taken as UTC.

    >>> rfc3339(datetime(2024, 5, 1, 12, 0, 0, 250000))
    '2024-05-01T12:00:00.250000Z'
    """
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class HttpTransport:
    """POST JSON for one sink and turn every failure into a redacted ``AlertSinkError``.

    Parameters
    ----------
    sink_name
        Prefix of every error message.
    timeout_s
        Total deadline of one request, connection included.
    secrets
        Strings that must never appear in an error message (tokens, keys, secret URLs).
    """

    def __init__(self, sink_name: str, *, timeout_s: float, secrets: Iterable[str] = ()) -> None:
        self.sink_name = sink_name
        self.timeout_s = timeout_s
        self._secrets = tuple(s for s in secrets if s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[int, str]:
        """POST ``body`` as JSON; return the 2xx status and response text.

        Raises
        ------
        AlertSinkError
            Retriable on connection errors, timeouts, 408/425/429 and 5xx; not retriable on any
            other status. The message never holds a secret.
        """
        if self._session is None:
            await self.start()
        assert self._session is not None
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        try:
            async with self._session.post(url, data=body, headers=all_headers) as resp:
                text = await resp.text()
                status = resp.status
        except TimeoutError as err:
            raise AlertSinkError(
                f"{self.sink_name}: no answer within {self.timeout_s:g} s", retriable=True
            ) from err
        except aiohttp.ClientError as err:
            # aiohttp messages may quote the URL, which for Slack is the secret itself; the
            # cause is not chained so that no traceback can print it either.
            raise AlertSinkError(
                self.redact(f"{self.sink_name}: request failed: {type(err).__name__}: {err}"),
                retriable=True,
            ) from None
        if 200 <= status < 300:
            return status, text
        excerpt = self.redact(" ".join(text.split())[:_BODY_EXCERPT])
        raise AlertSinkError(
            f"{self.sink_name}: HTTP {status}: {excerpt!r}",
            retriable=status in RETRIABLE_STATUSES,
        )

    @staticmethod
    def encode(payload: Any) -> bytes:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class HttpSink:
    """What every HTTP sink shares: its name, severity floor and transport, started and stopped.

    Subclasses implement ``send`` (and ``acknowledge`` where the service has one).
    """

    def __init__(
        self, name: str, *, timeout_s: float, min_severity: str, secrets: Iterable[str] = ()
    ) -> None:
        self.name = name
        self.min_severity = min_severity
        self._http = HttpTransport(name, timeout_s=timeout_s, secrets=secrets)

    async def start(self) -> None:
        await self._http.start()

    async def stop(self) -> None:
        await self._http.stop()
