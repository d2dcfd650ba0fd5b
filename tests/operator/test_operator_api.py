"""The operator API on the daemon's HTTP server, on the real broker: off without a token, 401
(logged, without any token) on a bad bearer, pins that beat automation, silences, acks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from alerts.webhook import SIGNATURE_HEADER, verify_signature
from monitor.daemon.daemon import Daemon
from monitor.flags.flagd_file import FlagdFileBackend
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import wait_for
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.server import serving
from tests.operator.harness import (
    Traffic,
    audit,
    incident,
    recovery,
    running,
    write_settings,
)

pytestmark = pytest.mark.integration

TOKEN = "op-t0ken-7f3a9c1e5b2d4a6f8e0c"
TOKEN_ENV = "DRIFTWARDEN_OPERATOR_TOKEN"
MODEL = "ranker"


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_operator_api_does_not_exist_without_a_token(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    topic = f"op-{unique}"
    settings = write_settings(tmp_path, broker, topic)
    async with running(settings, topic) as run:
        calls = [
            ("PUT", "/v1/flags/checkout/pin", {"value": False}),
            ("DELETE", "/v1/flags/checkout/pin", None),
            ("POST", f"/v1/models/{MODEL}/silence", {"duration": "1h"}),
            ("DELETE", f"/v1/models/{MODEL}/silence", None),
            ("POST", f"/v1/models/{MODEL}/ack", None),
        ]
        for method, path, body in calls:
            # Even the right token opens nothing: the routes are not mounted at all.
            async with run.http.request(method, run.url(path), json=body, headers=auth()) as r:
                assert r.status in (404, 405), (method, path, r.status)
        assert run.daemon.actions.operator_token is None


async def test_bad_or_missing_bearer_is_401_and_logged_without_any_token(
    broker: EmbeddedBroker,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    wrong = "op-t0ken-7f3a9c1e5b2d4a6f8e0X"  # a near miss of the real one
    topic = f"op-{unique}"
    settings = write_settings(tmp_path, broker, topic, named_models=(MODEL,))
    async with running(settings, topic) as run:
        path = f"/v1/models/{MODEL}/silence"
        presented: list[dict[str, str]] = [
            {},
            auth(wrong),
            {"Authorization": TOKEN},  # no scheme
            {"Authorization": f"Basic {TOKEN}"},
            auth(TOKEN + "x"),
        ]
        for headers in presented:
            async with run.http.post(run.url(path), json={"duration": "1h"}, headers=headers) as r:
                assert r.status == 401, headers
                assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
                assert TOKEN not in await r.text()
        assert MODEL not in run.daemon.actions.silenced_until

        refused = [
            rec
            for rec in caplog.records
            if rec.name == "monitor.http.operator" and "unauthorized" in rec.getMessage()
        ]
        assert len(refused) == len(presented)
        assert all(path in rec.getMessage() for rec in refused)

        # The right token works (the scheme is case-insensitive, as RFC 7235 says).
        async with run.http.post(
            run.url(path), json={"duration": "1h"}, headers={"Authorization": f"bearer {TOKEN}"}
        ) as r:
            assert r.status == 200, await r.text()
        assert MODEL in run.daemon.actions.silenced_until

        # Read-only endpoints need no token and never show it.
        for endpoint in ("/status", "/metrics", "/healthz", f"/v1/models/{MODEL}/health"):
            async with run.http.get(run.url(endpoint)) as r:
                assert r.status in (200, 404, 503), endpoint
                assert TOKEN not in await r.text(), endpoint
        assert TOKEN_ENV not in str(run.daemon.status())
    logged = "\n".join(f"{rec.getMessage()} {rec.args!r}" for rec in caplog.records)
    assert TOKEN not in logged
    assert wrong not in logged


async def test_a_pinned_flag_wins_over_automation_until_released(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    topic, flag = f"op-{unique}", "ranker-v2-enabled"
    flags_path = tmp_path / "flags.json"
    backend = FlagdFileBackend(flags_path)
    await backend.set(flag, True)
    settings = write_settings(
        tmp_path,
        broker,
        topic,
        flags={"type": "flagd_file", "path": str(flags_path)},
        degraded={"flags": {flag: False}, "alert": {"severity": "page"}},
    )
    async with (
        running(settings, topic) as run,
        Traffic(broker.bootstrap_servers, topic, MODEL) as traffic,
    ):
        # The operator holds the flag on, whatever happens to the model.
        async with run.http.put(
            run.url(f"/v1/flags/{flag}/pin"), json={"value": True}, headers=auth()
        ) as r:
            assert r.status == 200, await r.text()
            assert await r.json() == {"flag": flag, "pinned": True}
        async with run.http.put(
            run.url(f"/v1/flags/{flag}/pin"), json={"nope": 1}, headers=auth()
        ) as r:
            assert r.status == 400

        await incident(run, traffic, MODEL)
        actuator = run.daemon.actions.actuator
        assert actuator is not None
        # Automation decided to turn it off; the decision is recorded, not applied.
        await wait_for(
            lambda: actuator.desired().get(flag) is False, timeout=10, what="automation request"
        )
        assert actuator.pins() == {flag: True}
        assert await backend.get(flag) is True
        transition = next(e for e in audit(tmp_path) if e["kind"] == "transition")
        assert transition["flags"]["set"] == {flag: False}
        async with run.http.get(run.url("/status")) as r:
            assert (await r.json())["actions"]["pins"] == {flag: True}

        # Released mid-incident: automation's value lands.
        async with run.http.delete(run.url(f"/v1/flags/{flag}/pin"), headers=auth()) as r:
            assert r.status == 200
        await wait_for(_is(backend, flag, False), timeout=10, what="automation's value after unpin")
        assert actuator.pins() == {}
        kinds = [e["kind"] for e in audit(tmp_path)]
        assert kinds.index("flag_pinned") < kinds.index("transition") < kinds.index("flag_released")


def _is(backend: FlagdFileBackend, flag: str, value: bool) -> object:
    async def check() -> bool:
        return await backend.get(flag) is value

    return check


async def test_silenced_model_changes_state_and_flags_but_pages_nobody(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    secret = "whsec-5c4b3a2918"
    monkeypatch.setenv("DRIFTWARDEN_WEBHOOK_SECRET", secret)
    received: list[dict[str, object]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        assert verify_signature(secret.encode(), body, request.headers[SIGNATURE_HEADER])
        received.append(await request.json())
        return web.Response(status=204)

    topic, flag = f"op-{unique}", "ranker-fallback"
    flags_path = tmp_path / "flags.json"
    async with serving(hook) as hook_url:
        settings = write_settings(
            tmp_path,
            broker,
            topic,
            flags={"type": "flagd_file", "path": str(flags_path)},
            sinks=[{"type": "webhook", "url": f"{hook_url}/hook"}],
            degraded={"flags": {flag: "rules"}, "alert": {"severity": "page"}},
            named_models=(MODEL,),
        )
        async with (
            running(settings, topic) as run,
            Traffic(broker.bootstrap_servers, topic, MODEL) as traffic,
        ):
            async with run.http.post(
                run.url(f"/v1/models/{MODEL}/silence"), json={"duration": "1h"}, headers=auth()
            ) as r:
                assert r.status == 200
                silenced_until = (await r.json())["silenced_until"]
            assert silenced_until > run.daemon.clock() + 3500
            async with run.http.post(
                run.url(f"/v1/models/{MODEL}/silence"),
                json={"duration": "soon"},
                headers=auth(),
            ) as r:
                assert r.status == 400

            # Silenced incident: the state changes and the flag flips, nobody is paged.
            await incident(run, traffic, MODEL)
            backend = FlagdFileBackend(flags_path)
            await wait_for(_is_value(backend, flag, "rules"), timeout=10, what="flag flipped")
            transition = next(e for e in audit(tmp_path) if e["kind"] == "transition")
            assert transition["alert"]["outcome"] == "silenced"
            async with run.http.get(run.url("/status")) as r:
                status = await r.json()
            assert MODEL in status["actions"]["silenced"]
            assert status["actions"]["alerts"] == []
            await recovery(run, traffic, MODEL)

            # Unsilenced: the next incident pages. Deliveries to one sink keep their order, so
            # had the silenced incident been sent it would be there before this one.
            async with run.http.delete(run.url(f"/v1/models/{MODEL}/silence"), headers=auth()) as r:
                assert r.status == 200
            assert MODEL not in run.daemon.actions.silenced_until
            await incident(run, traffic, MODEL)
            await wait_for(lambda: len(received) >= 1, timeout=10, what="webhook delivery")
            assert len(received) == 1
            assert received[0]["alert"]["model"] == MODEL  # type: ignore[index]
            assert received[0]["status"] == "firing"
            kinds = [e["kind"] for e in audit(tmp_path)]
            assert "silenced" in kinds and "unsilenced" in kinds
            outcomes = [
                e["alert"]["outcome"]
                for e in audit(tmp_path)
                if e["kind"] == "transition" and e["to"] == "degraded"
            ]
            assert outcomes == ["silenced", "requested"]

            # Silenced while a paged incident is open: the recovery still resolves it.
            async with run.http.post(
                run.url(f"/v1/models/{MODEL}/silence"), json={"duration": "10m"}, headers=auth()
            ) as r:
                assert r.status == 200
            await recovery(run, traffic, MODEL)
            await wait_for(lambda: len(received) >= 2, timeout=10, what="resolve delivered")
            assert [m["status"] for m in received] == ["firing", "resolved"]
            assert run.daemon.actions.dispatcher is not None
            assert run.daemon.actions.dispatcher.active() == []


def _is_value(backend: FlagdFileBackend, flag: str, value: str) -> object:
    async def check() -> bool:
        return await backend.get(flag) == value

    return check


async def test_acknowledge_sends_pagerduty_acknowledge_with_the_incident_dedup_key(
    broker: EmbeddedBroker,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    topic = f"op-{unique}"
    async with FakePagerDuty() as pagerduty:
        monkeypatch.setenv("OP_TEST_PD_KEY", pagerduty.routing_key)
        settings = write_settings(
            tmp_path,
            broker,
            topic,
            sinks=[
                {"type": "pagerduty", "url": pagerduty.url, "routing_key_env": "OP_TEST_PD_KEY"}
            ],
        )
        async with (
            running(settings, topic) as run,
            Traffic(broker.bootstrap_servers, topic, MODEL) as traffic,
        ):
            # Nothing to acknowledge yet.
            async with run.http.post(run.url(f"/v1/models/{MODEL}/ack"), headers=auth()) as r:
                assert r.status == 404
            async with run.http.post(run.url("/v1/models/nobody/ack"), headers=auth()) as r:
                assert r.status == 404
            async with run.http.post(run.url(f"/v1/models/{MODEL}/ack")) as r:
                assert r.status == 401

            await incident(run, traffic, MODEL)
            await wait_for(lambda: pagerduty.actions() == ["trigger"], timeout=10, what="page")
            dedup_key = pagerduty.events[0]["dedup_key"]
            assert MODEL in dedup_key

            async with run.http.post(run.url(f"/v1/models/{MODEL}/ack"), headers=auth()) as r:
                assert r.status == 200
                assert await r.json() == {"model": MODEL, "acknowledged": True}
            await wait_for(
                lambda: pagerduty.actions(dedup_key) == ["trigger", "acknowledge"],
                timeout=10,
                what="acknowledge at PagerDuty",
            )
            assert pagerduty.rejected == []
            assert any(e["kind"] == "acknowledged" for e in audit(tmp_path))

            # The incident stays open: recovery still resolves it.
            await recovery(run, traffic, MODEL)
            await wait_for(
                lambda: pagerduty.actions(dedup_key)[-1:] == ["resolve"],
                timeout=10,
                what="resolve at PagerDuty",
            )
            async with run.http.get(run.url("/status")) as r:
                assert pagerduty.routing_key not in await r.text()
    logged = "\n".join(f"{rec.getMessage()} {rec.args!r}" for rec in caplog.records)
    assert pagerduty.routing_key not in logged
    assert TOKEN not in logged


def _strict_json(text: str) -> object:
    def refuse(name: str) -> object:
        raise ValueError(f"non-finite constant {name} in JSON")

    return json.loads(text, parse_constant=refuse)


async def test_a_non_finite_or_mistyped_pin_is_refused_and_the_flagd_file_stays_valid(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 item 7: a NaN pin broke every flag of the flagd file and /status (500)."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    topic, flag = f"op-{unique}", "ranker-v2-enabled"
    flags_path = tmp_path / "flags.json"
    backend = FlagdFileBackend(flags_path)
    await backend.set(flag, True)
    await backend.set("ranker-threshold", 0.5)
    settings = write_settings(
        tmp_path,
        broker,
        topic,
        flags={"type": "flagd_file", "path": str(flags_path)},
        degraded={"flags": {flag: False}, "alert": {"severity": "page"}},
    )
    original = flags_path.read_bytes()
    async with running(settings, topic) as run:
        actuator = run.daemon.actions.actuator
        assert actuator is not None
        for target in (flag, "ranker-threshold"):
            for body in (
                b'{"value": NaN}',
                b'{"value": Infinity}',
                b'{"value": -Infinity}',
                b'{"value": 1e999}',
                b'{"value": "rules"}',  # a string on a boolean (and on a numeric) flag
            ):
                async with run.http.put(
                    run.url(f"/v1/flags/{target}/pin"),
                    data=body,
                    headers={**auth(), "Content-Type": "application/json"},
                ) as r:
                    assert r.status == 400, (target, body, await r.text())
                    assert "value" in (await r.json())["error"]
            assert actuator.pins() == {}
            assert flags_path.read_bytes() == original
            _strict_json(flags_path.read_text())
            async with run.http.get(run.url("/status")) as r:
                assert r.status == 200
                assert _strict_json(await r.text())["actions"]["pins"] == {}  # type: ignore[index]

        # A finite pin of the flag's type is written, and everything still parses.
        async with run.http.put(
            run.url("/v1/flags/ranker-threshold/pin"), json={"value": 0.75}, headers=auth()
        ) as r:
            assert r.status == 200, await r.text()
        await wait_for(
            lambda: _threshold(flags_path) == 0.75, timeout=10, what="pin written to the file"
        )
        async with run.http.get(run.url("/status")) as r:
            assert r.status == 200
            assert _strict_json(await r.text())["actions"]["pins"] == {"ranker-threshold": 0.75}  # type: ignore[index]


def _threshold(flags_path: Path) -> object:
    definition = _strict_json(flags_path.read_text())["flags"]["ranker-threshold"]  # type: ignore[index]
    return definition["variants"][definition["defaultVariant"]]  # type: ignore[index]


async def test_a_silence_taken_while_kafka_still_starts_reaches_the_audit_file(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator API answers from the moment the HTTP server is up, before the broker is:
    what it records must be in the audit file, not only in memory."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    settings = write_settings(tmp_path, broker, f"early-{unique}", named_models=(MODEL,))
    settings.kafka.bootstrap_servers = f"127.0.0.1:{free_port()}"  # nothing listens there
    daemon = Daemon(settings, metrics=Metrics.create(CollectorRegistry()))
    task = asyncio.create_task(daemon.run())
    try:
        await wait_for(lambda: daemon.http.bound_port is not None, timeout=10, what="HTTP up")
        assert daemon.readiness_problems(), "Kafka cannot be up"
        url = f"http://127.0.0.1:{daemon.http.bound_port}/v1/models/{MODEL}/silence"
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, json={"duration": "1h"}, headers=auth()) as r,
        ):
            assert r.status == 200, await r.text()
        assert [e["model"] for e in audit(tmp_path) if e["kind"] == "silenced"] == [MODEL]
    finally:
        daemon.request_stop("test over")
        assert await asyncio.wait_for(task, 30) == 1  # it never started consuming
