"""The operator API (pin a flag, silence a model, acknowledge) behind a bearer token, and
the rollout gate ``/v1/models/{model}/health`` for Argo Rollouts and Flagger.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from alerts.base import Alert
from monitor.actions import ALERTNAME
from monitor.policy import Level, parse_duration

if TYPE_CHECKING:
    from monitor.actions import Actions
    from monitor.engine import Engine

__all__ = ["add_gate_routes", "add_operator_routes"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, default=str), status=status, content_type="application/json"
    )


def add_gate_routes(app: web.Application, engine: Engine) -> None:
    """``GET /v1/models/{model}/health``: 200 while ok or warn, 503 while degraded or worse.

    The body is the same either way (``healthy``, ``state``, ``level``, ``reasons``). Argo
    Rollouts' ``web`` provider takes ``jsonPath: "{$.healthy}"`` with ``successCondition:
    result == true``; it counts a non-2xx answer as an error, not a failure, so it asks with
    ``?always200=1``. Flagger's webhooks POST a JSON payload and fail on any status above 202,
    so the same answer is served to ``POST`` (the payload is ignored). See docs/rollout-gate.md.
    """

    async def health(request: web.Request) -> web.Response:
        model = request.match_info["model"]
        monitor = engine.models.get(model)
        if monitor is None:
            return _json(
                {
                    "model": model,
                    "healthy": False,
                    "state": "unknown",
                    "reasons": ["no events seen for this model"],
                },
                404,
            )
        level = monitor.health.level
        reasons = []
        for name, obs in monitor.observations.items():
            if obs.level is not Level.OK:
                stat = obs.statistic if math.isfinite(obs.statistic) else None
                thr = obs.threshold if math.isfinite(obs.threshold) else None
                reasons.append(
                    {"signal": name, "level": obs.level.label, "statistic": stat, "threshold": thr}
                )
        healthy = level < Level.DEGRADED
        if not reasons and level is not Level.OK:
            # Every signal is healthy again, but the model steps down only after recover_after.
            reasons.append(
                {
                    "signal": None,
                    "level": level.label,
                    "statistic": None,
                    "threshold": None,
                    "detail": "recovering: signals healthy, waiting for recover_after "
                    f"({monitor.policy.health.recover_after:g}s)",
                }
            )
        body = {
            "model": model,
            "healthy": healthy,
            "state": level.label,
            "level": int(level),
            "mode": monitor.policy.mode,
            "events": monitor.events,
            "reasons": reasons,
        }
        always200 = request.query.get("always200", "").lower() in ("1", "true", "yes")
        return _json(body, 200 if healthy or always200 else 503)

    app.router.add_get("/v1/models/{model}/health", health)
    app.router.add_post("/v1/models/{model}/health", health)


def add_operator_routes(app: web.Application, actions: Actions) -> None:
    """Mount the operator API when a token is configured; otherwise it does not exist."""
    token = actions.operator_token
    if not token:
        log.info("operator API off: no token configured")
        return
    # A token from a Kubernetes Secret often ends with a newline nobody sends back.
    expected = token.strip().encode()

    def guarded(handler: Handler) -> Handler:
        async def check(request: web.Request) -> web.StreamResponse:
            # The scheme is case-insensitive (RFC 7235); the token is compared in constant time.
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            ok = scheme.lower() == "bearer"
            if not hmac.compare_digest(presented.strip().encode(), expected) or not ok:
                # Never log what was presented: it may be a near-miss of the real token.
                log.warning(
                    "operator API: unauthorized %s %s from %s",
                    request.method,
                    request.path,
                    request.remote,
                )
                response = _json({"error": "unauthorized"}, 401)
                response.headers["WWW-Authenticate"] = 'Bearer realm="driftwarden"'
                return response
            return await handler(request)

        return check

    async def body_of(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            data = await request.json()
        except json.JSONDecodeError as err:
            raise web.HTTPBadRequest(text=f"body is not JSON: {err}") from err
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object")
        return data

    async def pin(request: web.Request) -> web.Response:
        flag = request.match_info["flag"]
        data = await body_of(request)
        if "value" not in data or not isinstance(data["value"], bool | str | int | float):
            return _json({"error": 'expected {"value": <bool|string|number>}'}, 400)
        if actions.actuator is None:
            return _json({"error": "no flag backend configured"}, 409)
        actions.actuator.pin(flag, data["value"], key=f"operator-pin:{flag}")
        actions.audit.write(
            {
                "kind": "flag_pinned",
                "at": actions.clock(),
                "flag": flag,
                "value": data["value"],
                "by": "operator",
            }
        )
        return _json({"flag": flag, "pinned": data["value"]})

    async def unpin(request: web.Request) -> web.Response:
        flag = request.match_info["flag"]
        if actions.actuator is None:
            return _json({"error": "no flag backend configured"}, 409)
        actions.actuator.unpin(flag)
        actions.audit.write(
            {"kind": "flag_released", "at": actions.clock(), "flag": flag, "by": "operator"}
        )
        return _json({"flag": flag, "pinned": None})

    async def silence(request: web.Request) -> web.Response:
        model = request.match_info["model"]
        data = await body_of(request)
        try:
            seconds = parse_duration(data.get("duration", "1h"))
        except ValueError as err:
            return _json({"error": str(err)}, 400)
        until = actions.clock() + seconds
        actions.silenced_until[model] = until
        actions.audit.write(
            {
                "kind": "silenced",
                "at": actions.clock(),
                "model": model,
                "until": until,
                "by": "operator",
            }
        )
        return _json({"model": model, "silenced_until": until})

    async def unsilence(request: web.Request) -> web.Response:
        model = request.match_info["model"]
        actions.silenced_until.pop(model, None)
        actions.audit.write(
            {"kind": "unsilenced", "at": actions.clock(), "model": model, "by": "operator"}
        )
        return _json({"model": model, "silenced_until": None})

    async def acknowledge(request: web.Request) -> web.Response:
        model = request.match_info["model"]
        if actions.dispatcher is None:
            return _json({"error": "no alert sinks configured"}, 409)
        probe = Alert(
            model=model,
            alertname=ALERTNAME,
            severity="info",
            state="",
            signals=(),
            summary="",
            description="",
            runbook_url="",
            starts_at=datetime.now(UTC),
        )
        if not actions.dispatcher.acknowledge(probe):
            return _json({"error": f"no active incident for model {model!r}"}, 404)
        actions.audit.write(
            {"kind": "acknowledged", "at": actions.clock(), "model": model, "by": "operator"}
        )
        return _json({"model": model, "acknowledged": True})

    app.router.add_put("/v1/flags/{flag}/pin", guarded(pin))
    app.router.add_delete("/v1/flags/{flag}/pin", guarded(unpin))
    app.router.add_post("/v1/models/{model}/silence", guarded(silence))
    app.router.add_delete("/v1/models/{model}/silence", guarded(unsilence))
    app.router.add_post("/v1/models/{model}/ack", guarded(acknowledge))
