"""The rollout gate ``/v1/models/{model}/health`` on the real broker, asked the way the
documented Argo Rollouts AnalysisTemplate and Flagger Canary (deploy/argo/) ask it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.tools.embedded_broker import EmbeddedBroker
from tests.conftest import wait_for
from tests.operator.harness import THRESHOLD, Running, Traffic, incident, running, write_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = "ranker-canary"


def _documents(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((ROOT / "deploy" / "argo" / name).read_text()))


async def argo_measurement(run: Running, model: str) -> str:
    """One measurement of deploy/argo/analysistemplate.yaml's metric, as Argo's web provider
    takes it: non-2xx is an error; else the jsonPath's value is tested by successCondition.
    """
    template = _documents("analysistemplate.yaml")[0]
    assert template["kind"] == "AnalysisTemplate"
    metric = template["spec"]["metrics"][0]
    web = metric["provider"]["web"]
    args = {"model": model, "driftwarden-url": run.base_url}
    url = web["url"]
    for name, value in args.items():
        url = url.replace(f"{{{{args.{name}}}}}", value)
    async with run.http.get(url) as r:
        if not 200 <= r.status < 300:
            return "Error"
        body = await r.json()
    # The template's jsonPath and condition are exactly the ones simulated here.
    assert web["jsonPath"] == "{$.healthy}"
    assert metric["successCondition"] == "result == true"
    result = body["healthy"]
    assert isinstance(result, bool)
    return "Successful" if result is True else "Failed"


async def flagger_check(run: Running, model: str) -> bool:
    """One call of deploy/argo/flagger-canary.yaml's rollout webhook, as Flagger makes it:
    a POST of its JSON payload; any status above 202 fails the check.
    """
    canary = _documents("flagger-canary.yaml")[0]
    hook = next(h for h in canary["spec"]["analysis"]["webhooks"] if h["type"] == "rollout")
    path = hook["url"].split(":8080", 1)[1].replace("ranker-canary", model)
    payload = {
        "name": canary["metadata"]["name"],
        "namespace": canary["metadata"]["namespace"],
        "phase": "Progressing",
        "metadata": hook.get("metadata", {}),
    }
    async with run.http.post(run.url(path), json=payload) as r:
        return r.status <= 202


async def gate(run: Running, model: str, query: str = "") -> tuple[int, dict[str, Any]]:
    async with run.http.get(run.url(f"/v1/models/{model}/health{query}")) as r:
        assert r.content_type == "application/json"
        return r.status, await r.json()


async def test_rollout_gate_passes_a_healthy_model_and_stops_a_degraded_one(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    topic = f"gate-{unique}"
    settings = write_settings(tmp_path, broker, topic)
    async with (
        running(settings, topic) as run,
        Traffic(broker.bootstrap_servers, topic, MODEL) as traffic,
    ):
        status, body = await gate(run, "never-seen")
        assert status == 404
        assert body["healthy"] is False and body["state"] == "unknown"
        assert await argo_measurement(run, "never-seen") == "Error"

        # Healthy.
        await wait_for(
            lambda: (
                MODEL in run.daemon.engine.models and run.daemon.engine.models[MODEL].events >= 200
            ),
            timeout=15,
            what="traffic",
        )
        status, body = await gate(run, MODEL)
        assert status == 200
        assert body["healthy"] is True and body["state"] == "ok"
        assert body["model"] == MODEL and body["level"] == 0 and body["reasons"] == []
        assert body["mode"] == "enforce" and body["events"] >= 200
        assert await argo_measurement(run, MODEL) == "Successful"
        assert await flagger_check(run, MODEL) is True

        # Degraded: 503 naming the signal, its statistic and its threshold.
        await incident(run, traffic, MODEL)
        status, body = await gate(run, MODEL)
        assert status == 503
        assert body["healthy"] is False and body["state"] == "degraded" and body["level"] == 2
        [reason] = body["reasons"]
        assert reason["signal"] == "error_rate"
        assert reason["level"] == "degraded"
        assert reason["threshold"] == THRESHOLD
        assert reason["statistic"] >= THRESHOLD
        status, always = await gate(run, MODEL, "?always200=1")
        assert status == 200 and always["healthy"] is False and always["state"] == "degraded"
        status, _ = await gate(run, MODEL, "?always200=0")
        assert status == 503
        assert await argo_measurement(run, MODEL) == "Failed"
        assert await flagger_check(run, MODEL) is False

        # Signals healthy again, model still degraded until recover_after: still 503, and
        # the reason says why.
        traffic.error_probability = 0.0
        seen: list[dict[str, Any]] = []

        async def recovering() -> bool:
            status, body = await gate(run, MODEL)
            if status == 503 and body["reasons"] and body["reasons"][0]["signal"] is None:
                seen.append(body)
            return body["state"] == "ok"

        await wait_for(recovering, timeout=15, what="recovery")
        assert seen, "no answer while the model was waiting for recover_after"
        assert "recover_after" in seen[0]["reasons"][0]["detail"]
        assert await argo_measurement(run, MODEL) == "Successful"
        assert await flagger_check(run, MODEL) is True
