"""End to end on real components: Tansu broker, Alertmanager, PostgreSQL + Unleash.

Healthy traffic -> no action; an error-rate incident -> one flag flip and exactly one alert;
recovery -> flag restored, alert resolved; Unleash down mid-incident -> consumption goes on
and the flip lands when it is back; an oscillating signal -> at most one incident per cooldown.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.flags.unleash import UnleashBackend
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from monitor.tools.traffic import ErrorEvents, TrafficGenerator
from tests.conftest import kafka_section, wait_for
from tests.core.kafka_helpers import create_topic
from tests.services.alertmanager import running_alertmanager
from tests.services.unleash import UnleashServer

pytestmark = pytest.mark.integration

FOR_S, COOLDOWN_S, RECOVER_S = 1.0, 6.0, 3.0


def settings_for(
    tmp_path: Path,
    broker: EmbeddedBroker,
    topic: str,
    unleash: UnleashServer,
    alertmanager_url: str,
    flag: str,
) -> Any:
    config = {
        "kafka": kafka_section(broker.bootstrap_servers, topic),
        "http": {"host": "127.0.0.1", "port": free_port()},
        "lifecycle": {"log_format": "text", "grace_period_s": 10},
        "flags": {
            "type": "unleash",
            "url": unleash.url,
            "token_env": "E2E_UNLEASH_TOKEN",
            "environment": unleash.environment,
        },
        "alerts": {
            "sinks": [{"type": "alertmanager", "url": alertmanager_url, "resend_interval_s": 1.0}]
        },
        "actions": {"audit_log": str(tmp_path / "audit.jsonl")},
        "models": {
            "default": {
                "mode": "enforce",
                "health": {"for": FOR_S, "cooldown": COOLDOWN_S, "recover_after": RECOVER_S},
                "signals": [
                    {
                        "name": "error_rate",
                        "source": "error",
                        "detector": {
                            "type": "rate_window",
                            "window": 200,
                            "min_samples": 100,
                            "stride": 10,
                            "persist": 0,
                        },
                        "thresholds": {"degraded": 0.2},
                    }
                ],
                "actions": {"degraded": {"flags": {flag: False}, "alert": {"severity": "page"}}},
                "runbook_url": "https://runbooks.example/ModelUnhealthy",
            }
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    return load_settings(path)


async def _is_false(probe: UnleashBackend, flag: str) -> bool:
    try:
        return await probe.get(flag) is False
    except Exception:  # Unleash still starting
        return False


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_incident_flips_flag_pages_once_and_recovers_on_real_components(
    broker: EmbeddedBroker,
    unleash_server: UnleashServer,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("E2E_UNLEASH_TOKEN", unleash_server.admin_token)
    topic, model, flag = f"e2e-{unique}", "checkout", f"checkout-enabled-{unique}"[:80]
    await create_topic(broker.bootstrap_servers, topic, partitions=2)
    probe = UnleashBackend(
        unleash_server.url, unleash_server.admin_token, environment=unleash_server.environment
    )
    await probe.start()
    await probe.set(flag, True)  # the service's flag, on before the incident
    # One model's events at 400/s; the test raises their error rate to start an incident.
    errors = ErrorEvents(error_rate=0.0)

    async with (
        running_alertmanager(tmp_path) as am,
        TrafficGenerator(
            broker.bootstrap_servers,
            topic,
            rate_per_model=400.0,
            models=(model,),
            script=(),
            seed=7,
            make=errors,
            linger_ms=5,
        ),
    ):
        settings = settings_for(tmp_path, broker, topic, unleash_server, am.url, flag)
        metrics = Metrics.create(CollectorRegistry())
        daemon = Daemon(settings, metrics=metrics)
        task = asyncio.create_task(daemon.run())
        try:
            # 1. Healthy traffic: no transition, no flag write, no alert.
            await wait_for(lambda: daemon.applied_events >= 1500, timeout=60, what="traffic")
            monitor = daemon.engine.models[model]
            assert monitor.health.level.label == "ok"
            assert not [e for e in audit(tmp_path) if e["kind"] == "transition"]
            assert am.receiver.alerts() == []

            # 2. Error surge: one transition, one flip, exactly one page.
            errors.error_rate = 0.5
            await wait_for(
                lambda: monitor.health.level.label == "degraded", timeout=30, what="degraded"
            )
            await wait_for(
                lambda: any(e["kind"] == "flag_applied" for e in audit(tmp_path)),
                timeout=10,
                what="flag flip",
            )
            flip = next(e for e in audit(tmp_path) if e["kind"] == "flag_applied")
            assert flip["value"] is False
            assert flip["latency_s"] < 2.0, "flag flip later than 2 s after the breach held"
            assert await probe.get(flag) is False
            transition = next(e for e in audit(tmp_path) if e["kind"] == "transition")
            firing_wait = await wait_for(
                lambda: len(am.receiver.alerts("firing")) >= 1,
                timeout=15,
                what="alert at the receiver",
            )
            fired = am.receiver.alerts("firing")[0]
            assert fired["labels"]["model"] == model
            assert fired["labels"]["alertname"] == "ModelUnhealthy"
            assert fired["labels"]["signal"] == "error_rate"
            assert fired["labels"]["severity"] == "page"
            assert fired["annotations"]["runbook_url"] == "https://runbooks.example/ModelUnhealthy"
            assert "error_rate=" in fired["annotations"]["description"]
            print(
                f"\nbreach->flag flip {flip['latency_s']:.3f}s; alert at receiver "
                f"{firing_wait:.2f}s after the flip was seen"
            )

            # 3. Unleash down during the incident: consumption goes on; nothing lost.
            unleash_server.stop()
            applied_before = daemon.applied_events
            await wait_for(
                lambda: daemon.applied_events > applied_before + 500,
                timeout=20,
                what="consumption while Unleash is down",
            )

            # 4. Recovery (while Unleash is still down): the restore waits and lands later.
            errors.error_rate = 0.0
            await wait_for(lambda: monitor.health.level.label == "ok", timeout=40, what="recovery")
            await wait_for(
                lambda: (
                    metrics.registry.get_sample_value(
                        "driftwarden_flag_backend_up", {"backend": "unleash"}
                    )
                    == 0.0
                ),
                timeout=15,
                what="flag backend marked down",
            )
            unleash_server.start()
            await wait_for(lambda: probe.get(flag), timeout=40, what="flag restored")
            await wait_for(
                lambda: len(am.receiver.alerts("resolved")) >= 1, timeout=20, what="alert resolved"
            )
            # Re-sends while firing never made a second notification of the incident.
            model_firing = [
                a for a in am.receiver.alerts("firing") if a["labels"]["model"] == model
            ]
            assert len({a["startsAt"] for a in model_firing}) == 1
            assert (
                len(
                    [
                        n
                        for n in am.receiver.notifications
                        if n["status"] == "firing"
                        and any(a["labels"]["model"] == model for a in n["alerts"])
                    ]
                )
                == 1
            )
            transitions = [e for e in audit(tmp_path) if e["kind"] == "transition"]
            assert [(t["from"], t["to"]) for t in transitions] == [
                ("ok", "degraded"),
                ("degraded", "ok"),
            ]
            assert transitions[0]["causes"][0]["signal"] == "error_rate"
            assert transitions[0]["causes"][0]["threshold"] == 0.2
            assert transition["to"] == "degraded"
            # The outage of the flag backend was itself alerted.
            kinds = [e["kind"] for e in audit(tmp_path)]
            assert "flag_backend_down" in kinds and "flag_backend_up" in kinds

            # 5. A new incident while Unleash is down: the flip waits, lands when it is back.
            await wait_for(
                lambda: daemon.clock() - monitor.health.last_transition_at >= COOLDOWN_S,
                timeout=COOLDOWN_S + 10,
                what="the cooldown after the recovery over",
            )
            unleash_server.stop()
            errors.error_rate = 0.5
            await wait_for(
                lambda: monitor.health.level.label == "degraded", timeout=30, what="second incident"
            )
            applied_before = daemon.applied_events
            await wait_for(
                lambda: daemon.applied_events > applied_before + 500,
                timeout=20,
                what="consumption while the flip is pending",
            )
            actuator = daemon.actions.actuator
            assert actuator is not None
            await wait_for(
                lambda: flag in actuator.pending() and not actuator.backend_up,
                timeout=20,
                what="flip pending while Unleash is down",
            )
            unleash_server.start()
            landed = await wait_for(
                lambda: _is_false(probe, flag),
                timeout=40,
                what="pending flip landed after Unleash came back",
            )
            print(f"pending flip landed {landed:.1f}s after waiting started")
            errors.error_rate = 0.0
            await wait_for(
                lambda: monitor.health.level.label == "ok", timeout=40, what="second recovery"
            )
            await wait_for(lambda: probe.get(flag), timeout=20, what="flag restored again")

            # 6. Oscillation: a new incident opens at least a cooldown after a recovery.
            started = time.time()
            for _ in range(6):
                errors.error_rate = 0.5
                await asyncio.sleep(1.5)
                errors.error_rate = 0.0
                await asyncio.sleep(1.5)
            later = [e for e in audit(tmp_path) if e["kind"] == "transition" and e["at"] >= started]
            gaps = [
                b["at"] - a["at"]
                for a, b in itertools.pairwise(later)
                if a["to"] == "ok" and b["from"] == "ok"
            ]
            assert all(gap >= COOLDOWN_S - 0.01 for gap in gaps), gaps
            # At most one incident per cooldown, each one transition in and one out.
            assert len(later) <= 2 * (18 / COOLDOWN_S + 1)
        finally:
            daemon.request_stop("test over")
            assert await asyncio.wait_for(task, 30) == 0
            await probe.stop()
            if not unleash_server._process:
                unleash_server.start()
