"""A fake PagerDuty Events API v2 on 127.0.0.1 that validates every event like the real one.

Schema: https://developer.pagerduty.com/docs/events-api-v2/trigger-events/ (and the acknowledge
and resolve pages). Accepted events are recorded; ``unavailable`` answers 503 to simulate an outage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.server import LocalServer

__all__ = ["FakePagerDuty", "validate_event"]

EVENT_ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
_TOP_LEVEL = {
    "routing_key",
    "event_action",
    "dedup_key",
    "payload",
    "images",
    "links",
    "client",
    "client_url",
}
_PAYLOAD = {
    "summary",
    "source",
    "severity",
    "timestamp",
    "component",
    "group",
    "class",
    "custom_details",
}


def _str(errors: list[str], obj: dict[str, Any], key: str, *, required: bool) -> None:
    if key not in obj:
        if required:
            errors.append(f"'{key}' is missing or blank")
    elif not isinstance(obj[key], str) or not obj[key].strip():
        errors.append(f"'{key}' must be a non-blank string")


def validate_event(event: Any) -> list[str]:
    """The problems PagerDuty would report for ``event``; empty when it is valid."""
    if not isinstance(event, dict):
        return ["Event object must be a JSON object"]
    errors = [f"unknown field '{k}'" for k in event if k not in _TOP_LEVEL]
    _str(errors, event, "routing_key", required=True)
    action = event.get("event_action")
    if action not in EVENT_ACTIONS:
        errors.append(f"'event_action' must be one of {', '.join(EVENT_ACTIONS)}")
    _str(errors, event, "dedup_key", required=action != "trigger")
    if isinstance(event.get("dedup_key"), str) and len(event["dedup_key"]) > 255:
        errors.append("'dedup_key' must be at most 255 characters")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            errors.append("'payload' is missing or not an object")
        else:
            errors += [f"unknown field 'payload.{k}'" for k in payload if k not in _PAYLOAD]
            _str(errors, payload, "summary", required=True)
            _str(errors, payload, "source", required=True)
            if len(str(payload.get("summary", ""))) > 1024:
                errors.append("'payload.summary' must be at most 1024 characters")
            if payload.get("severity") not in SEVERITIES:
                errors.append(f"'payload.severity' must be one of {', '.join(SEVERITIES)}")
            for key in ("timestamp", "component", "group", "class"):
                _str(errors, payload, key, required=False)
            details = payload.get("custom_details", {})
            if not isinstance(details, dict):
                errors.append("'payload.custom_details' must be an object")
    links = event.get("links", [])
    if not isinstance(links, list) or not all(
        isinstance(link, dict) and isinstance(link.get("href"), str) for link in links
    ):
        errors.append("'links' must be a list of objects with an 'href'")
    return errors


@dataclass
class FakePagerDuty(LocalServer):
    """Serve ``POST /v2/enqueue``; ``url`` is the endpoint to configure."""

    routing_key: str = "R0UT1NGKEY0000000000000000000000"
    events: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    unavailable: bool = False

    @property
    def url(self) -> str:
        return f"{self.base_url}/v2/enqueue"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/enqueue", self._enqueue)

    def actions(self, dedup_key: str | None = None) -> list[str]:
        return [
            e["event_action"]
            for e in self.events
            if dedup_key is None or e.get("dedup_key") == dedup_key
        ]

    async def _enqueue(self, request: web.Request) -> web.Response:
        if self.unavailable:
            return web.json_response({"status": "unavailable"}, status=503)
        try:
            event = await request.json()
        except ValueError:
            return web.json_response(
                {"status": "invalid event", "message": "Event object is invalid", "errors": []},
                status=400,
            )
        errors = validate_event(event)
        if not errors and event["routing_key"] != self.routing_key:
            errors = ["Invalid routing key"]
        if errors:
            self.rejected.append(event)
            return web.json_response(
                {"status": "invalid event", "message": "Event object is invalid", "errors": errors},
                status=400,
            )
        self.events.append(event)
        dedup_key = event.get("dedup_key") or f"generated-{len(self.events)}"
        return web.json_response(
            {"status": "success", "message": "Event processed", "dedup_key": dedup_key},
            status=202,
        )
