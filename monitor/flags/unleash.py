"""The Unleash backend: sets feature toggles and strategy variants through the Admin API.

Owns the Admin API calls (aiohttp) and the one strategy driftwarden adds to carry a value.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from monitor.errors import FlagBackendError
from monitor.flags.base import FlagValue

__all__ = ["STRATEGY_TITLE", "UnleashBackend", "decode_variant", "encode_variant"]

log = logging.getLogger(__name__)

# The title marks the strategy driftwarden owns; every other strategy belongs to the service.
STRATEGY_TITLE = "driftwarden"


def encode_variant(value: str | int | float) -> dict[str, Any]:
    """The single strategy variant that makes Unleash clients return ``value``.

    >>> encode_variant("rules")["payload"]
    {'type': 'string', 'value': 'rules'}
    >>> encode_variant(0.25)["name"], encode_variant(0.25)["payload"]
    ('0.25', {'type': 'number', 'value': '0.25'})
    """
    if isinstance(value, str):
        payload = {"type": "string", "value": value}
    else:
        payload = {"type": "number", "value": json.dumps(value)}
    return {
        "name": str(value),
        "weight": 1000,
        "weightType": "variable",
        "stickiness": "default",
        "payload": payload,
    }


def decode_variant(variant: dict[str, Any]) -> FlagValue:
    """The value a variant written by :func:`encode_variant` carries.

    >>> decode_variant(encode_variant(3)), decode_variant(encode_variant("human-review"))
    (3, 'human-review')
    """
    payload = variant.get("payload") or {}
    raw = payload.get("value")
    if payload.get("type") == "number" and isinstance(raw, str):
        try:
            number = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        if isinstance(number, int | float) and not isinstance(number, bool):
            return number
    if isinstance(raw, str):
        return raw
    return str(variant.get("name", ""))


class UnleashBackend:
    """Sets Unleash flags in one project and environment through the Admin API.

    A boolean turns the feature on or off in the environment. Any other value enables the
    feature and puts a strategy titled ``driftwarden`` (``flexibleRollout`` at 100 %, evaluated
    first) carrying one variant of weight 1000 named after the value, so every client's
    ``get_variant`` returns it with payload ``{"type": "string"|"number", "value": ...}``.
    Unleash 5+ refuses the older feature-environment variants, hence a strategy variant. Setting
    a boolean again removes that strategy and leaves the service's strategies as they were.

    Each ``set`` reads the feature first and writes only what differs, so it is idempotent.

    Parameters
    ----------
    url
        The Unleash server's base URL, e.g. ``http://unleash:4242`` (``/api`` is added).
    token
        An admin (or personal access) token, sent verbatim in ``Authorization``.
    project, environment
        Where the flags live.
    create_missing
        Create a feature that does not exist yet (type ``feature_type``) instead of failing.
    timeout_s
        Deadline of one HTTP call.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        project: str = "default",
        environment: str = "production",
        create_missing: bool = True,
        feature_type: str = "kill-switch",
        timeout_s: float = 5.0,
        name: str = "unleash",
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive.")
        self.url = url.rstrip("/")
        self.project = project
        self.environment = environment
        self.create_missing = create_missing
        self.feature_type = feature_type
        self.timeout_s = timeout_s
        self.name = name
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        # The token never appears in logs or reprs.
        return (
            f"UnleashBackend(url={self.url!r}, project={self.project!r}, "
            f"environment={self.environment!r})"
        )

    async def start(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"Authorization": self._token, "Accept": "application/json"},
            )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> UnleashBackend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def get(self, flag: str) -> FlagValue | None:
        state = await self._environment_state(flag)
        if state is None:
            return None
        enabled = bool(state.get("enabled"))
        ours = self._our_strategy(state)
        if enabled and ours is not None and ours.get("variants"):
            return decode_variant(ours["variants"][0])
        return enabled

    async def set(self, flag: str, value: FlagValue) -> None:
        state = await self._environment_state(flag)
        if state is None:
            if not self.create_missing:
                raise FlagBackendError(
                    f"unleash: no feature {flag!r} in project {self.project!r} "
                    "and create_missing is off",
                    retriable=False,
                )
            await self._create_feature(flag)
            state = await self._environment_state(flag)
            if state is None:
                raise FlagBackendError(f"unleash: feature {flag!r} vanished after creation")
        if isinstance(value, bool):
            await self._set_enabled(flag, state, value)
        else:
            await self._set_variant(flag, state, value)

    async def _set_enabled(self, flag: str, state: dict[str, Any], value: bool) -> None:
        ours = self._our_strategy(state)
        if ours is not None:
            others = [s for s in state.get("strategies", []) if s is not ours]
            if value and not others:
                # Without any strategy left an enabled feature would mean something else to
                # each SDK generation; keep the plain "on for everyone" one.
                await self._call(
                    "POST", self._env_path(flag, "strategies"), self._strategy_body(flag, None)
                )
            await self._call("DELETE", self._env_path(flag, f"strategies/{ours['id']}"))
            log.info("unleash: removed driftwarden strategy of %s", flag)
        if bool(state.get("enabled")) != value:
            switch = "on" if value else "off"
            await self._call("POST", self._env_path(flag, switch))
            log.info("unleash: %s turned %s in %s", flag, switch, self.environment)

    async def _set_variant(
        self, flag: str, state: dict[str, Any], value: str | int | float
    ) -> None:
        strategies: list[dict[str, Any]] = state.get("strategies", [])
        ours = self._our_strategy(state)
        others = [s for s in strategies if s is not ours]
        first = min((int(s.get("sortOrder", 0)) for s in others), default=1) - 1
        body = self._strategy_body(flag, value, sort_order=first)
        if ours is None:
            await self._call("POST", self._env_path(flag, "strategies"), body)
            log.info("unleash: %s set to variant %r", flag, value)
        elif not self._strategy_matches(ours, body):
            await self._call("PUT", self._env_path(flag, f"strategies/{ours['id']}"), body)
            log.info("unleash: %s set to variant %r", flag, value)
        if not state.get("enabled"):
            await self._call("POST", self._env_path(flag, "on"))

    @staticmethod
    def _strategy_matches(ours: dict[str, Any], body: dict[str, Any]) -> bool:
        variants = ours.get("variants") or []
        return (
            not ours.get("disabled")
            and int(ours.get("sortOrder", 0)) <= int(body["sortOrder"])
            and ours.get("parameters", {}).get("rollout") == "100"
            and not ours.get("constraints")
            and not ours.get("segments")
            and len(variants) == 1
            and variants[0].get("name") == body["variants"][0]["name"]
            and variants[0].get("payload") == body["variants"][0]["payload"]
        )

    def _strategy_body(
        self, flag: str, value: str | int | float | None, *, sort_order: int = 0
    ) -> dict[str, Any]:
        return {
            "name": "flexibleRollout",
            "title": STRATEGY_TITLE if value is not None else None,
            "disabled": False,
            "sortOrder": sort_order,
            "constraints": [],
            "parameters": {"rollout": "100", "stickiness": "default", "groupId": flag},
            "variants": [encode_variant(value)] if value is not None else [],
        }

    @staticmethod
    def _our_strategy(state: dict[str, Any]) -> dict[str, Any] | None:
        for strategy in state.get("strategies", []):
            if strategy.get("title") == STRATEGY_TITLE:
                return strategy  # type: ignore[no-any-return]
        return None

    async def _environment_state(self, flag: str) -> dict[str, Any] | None:
        status, body = await self._call("GET", self._env_path(flag, ""), allow_404=True)
        if status == 404:
            return None
        if not isinstance(body, dict):
            raise FlagBackendError(f"unleash: unexpected answer for {flag!r}: {body!r}")
        return body

    async def _create_feature(self, flag: str) -> None:
        path = f"/api/admin/projects/{quote(self.project, safe='')}/features"
        body = {
            "name": flag,
            "type": self.feature_type,
            "description": "Created by driftwarden to degrade a model gracefully.",
        }
        await self._call("POST", path, body)
        log.info("unleash: created feature %s in project %s", flag, self.project)

    def _env_path(self, flag: str, tail: str) -> str:
        path = (
            f"/api/admin/projects/{quote(self.project, safe='')}/features/"
            f"{quote(flag, safe='')}/environments/{quote(self.environment, safe='')}"
        )
        return f"{path}/{tail}" if tail else path

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        allow_404: bool = False,
    ) -> tuple[int, Any]:
        if self._session is None or self._session.closed:
            await self.start()
        assert self._session is not None
        url = f"{self.url}{path}"
        try:
            async with self._session.request(method, url, json=body) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as err:
            raise FlagBackendError(
                f"unleash: {method} {url} failed: {err!r}", retriable=True
            ) from err
        if status == 404 and allow_404:
            return status, None
        if status >= 400:
            retriable = status in (408, 425, 429) or status >= 500
            raise FlagBackendError(
                f"unleash: {method} {url} answered {status}: {text[:300]}", retriable=retriable
            )
        if not text:
            return status, None
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text
