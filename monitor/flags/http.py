"""The generic HTTP flag backend: one templated request per flag write.

Owns the URL and JSON body templating and, when configured, reading a flag back over GET.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from monitor.errors import FlagBackendError
from monitor.flags.base import FlagValue

__all__ = ["HttpFlagBackend", "render_body", "render_url"]

log = logging.getLogger(__name__)


def render_url(template: str, flag: str, value: FlagValue | None = None) -> str:
    """The URL with ``{flag}`` (and ``{value}``) substituted, percent-encoded.

    >>> render_url("http://flags.local/v1/flags/{flag}", "fraud model")
    'http://flags.local/v1/flags/fraud%20model'
    """
    url = template.replace("{flag}", quote(flag, safe=""))
    if value is not None:
        url = url.replace("{value}", quote(_text(value), safe=""))
    return url


def render_body(template: str, flag: str, value: FlagValue) -> str:
    """The JSON body with ``{flag}`` as string content and ``{value}`` as a JSON literal.

    ``{flag}`` is escaped for use inside a JSON string (write ``"{flag}"``); ``{value}`` becomes
    ``true``, ``"rules"``, ``0.5``, so it is written without quotes.

    >>> render_body('{"key": "{flag}", "value": {value}}', "fraud-fallback", True)
    '{"key": "fraud-fallback", "value": true}'
    >>> render_body('{"key": "{flag}", "value": {value}}', 'say "hi"', "rules")
    '{"key": "say \\\\"hi\\\\"", "value": "rules"}'
    """
    return template.replace("{flag}", json.dumps(flag)[1:-1]).replace("{value}", json.dumps(value))


def _text(value: FlagValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class HttpFlagBackend:
    """Sets a flag with one HTTP request built from templates.

    Parameters
    ----------
    url
        URL template of the write, with ``{flag}`` (and optionally ``{value}``).
    method
        HTTP method of the write.
    body
        JSON body template, see :func:`render_body`; ``None`` sends no body.
    auth_header, auth_value
        Header sent with every request (e.g. ``Authorization: Bearer ...``); the value comes
        from the environment and is never logged.
    get_url
        URL template answering the flag's current state as JSON. Without it ``get`` returns the
        last value this backend wrote, and ``set`` always writes (the write is assumed
        idempotent, as a PUT is).
    get_value_path
        Dotted path of the value in the GET answer (``"value"``, ``"data.enabled"``); empty for
        the whole answer.
    timeout_s
        Deadline of one HTTP call.
    """

    def __init__(
        self,
        url: str,
        *,
        method: str = "PUT",
        body: str | None = '{"flag": "{flag}", "value": {value}}',
        auth_header: str = "Authorization",
        auth_value: str | None = None,
        get_url: str | None = None,
        get_value_path: str = "value",
        timeout_s: float = 5.0,
        name: str = "http",
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive.")
        self.url = url
        self.method = method.upper()
        self.body = body
        self.auth_header = auth_header
        self.get_url = get_url
        self.get_value_path = get_value_path
        self.timeout_s = timeout_s
        self.name = name
        self._auth_value = auth_value
        self._session: aiohttp.ClientSession | None = None
        self._written: dict[str, FlagValue] = {}

    def __repr__(self) -> str:
        return f"HttpFlagBackend(method={self.method!r}, url={self.url!r})"

    async def start(self) -> None:
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json"}
            if self._auth_value is not None:
                headers[self.auth_header] = self._auth_value
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), headers=headers
            )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HttpFlagBackend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def get(self, flag: str) -> FlagValue | None:
        if self.get_url is None:
            return self._written.get(flag)
        status, answer = await self._call("GET", render_url(self.get_url, flag), None)
        if status == 404:
            return None
        value = _dig(answer, self.get_value_path)
        if isinstance(value, bool | str | int | float):
            return value
        return None

    async def set(self, flag: str, value: FlagValue) -> None:
        if self.get_url is not None:
            current = await self.get(flag)
            if type(current) is type(value) and current == value:
                self._written[flag] = value
                return
        data = None if self.body is None else render_body(self.body, flag, value)
        await self._call(self.method, render_url(self.url, flag, value), data)
        self._written[flag] = value
        log.info("http flag backend %s: %s set to %r", self.name, flag, value)

    async def _call(self, method: str, url: str, data: str | None) -> tuple[int, Any]:
        if self._session is None or self._session.closed:
            await self.start()
        assert self._session is not None
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._session.request(method, url, data=data, headers=headers) as response:
                status = response.status
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as err:
            raise FlagBackendError(f"http flag backend: {method} {url} failed: {err!r}") from err
        if status == 404 and method == "GET":
            return status, None
        if status >= 400:
            retriable = status in (408, 425, 429) or status >= 500
            raise FlagBackendError(
                f"http flag backend: {method} {url} answered {status}: {text[:300]}",
                retriable=retriable,
            )
        if method != "GET" or not text:
            return status, None
        try:
            return status, json.loads(text)
        except json.JSONDecodeError as err:
            raise FlagBackendError(
                f"http flag backend: GET {url} answered non-JSON {text[:100]!r}", retriable=False
            ) from err


def _dig(answer: Any, path: str) -> Any:
    for part in path.split(".") if path else ():
        if not isinstance(answer, dict):
            return None
        answer = answer.get(part)
    return answer
