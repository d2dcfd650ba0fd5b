"""The rollout gate: ``/v1/models/{model}/health``, a model's health in the shape Argo
Rollouts' ``web`` metric provider and Flagger's webhooks read (docs/rollout-gate.md).

Read-only and open (no token), like ``/status``; the model id in the path is checked as the
operator API checks it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from aiohttp import web

from monitor.config.policy import Level
from monitor.http.operator import Refused, check_model_id, json_response, refusal

if TYPE_CHECKING:
    from monitor.engine.engine import Engine

__all__ = ["add_gate_routes"]


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
        try:
            check_model_id(model)
        except Refused as err:
            return refusal(err)
        monitor = engine.models.get(model)
        if monitor is None:
            return json_response(
                {
                    "model": model,
                    "healthy": False,
                    "state": "unknown",
                    "reasons": ["no events seen for this model"],
                    "error": "model: no events seen for this model",
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
        return json_response(body, 200 if healthy or always200 else 503)

    app.router.add_get("/v1/models/{model}/health", health)
    app.router.add_post("/v1/models/{model}/health", health)
