"""PagerDuty and Slack sinks against schema-validating fakes; the signed webhook; the console."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from alerts.base import AlertSink
from alerts.console import ConsoleSink
from alerts.dispatcher import AlertDispatcher
from alerts.errors import AlertSinkError
from alerts.pagerduty import PagerDutySink
from alerts.slack import SlackSink
from alerts.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSink, verify_signature
from monitor.observability.metrics import Metrics
from tests.alerts.conftest import MakeAlert
from tests.conftest import wait_for
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.server import serving
from tests.fakes.slack import FakeSlack
from tests.services.postgres import free_port

pytestmark = pytest.mark.integration

WEBHOOK_SECRET = "whsec-0123456789abcdef"


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    value: float | None = metrics.registry.get_sample_value(name, labels)
    return value


def fast_dispatcher(sinks: list[AlertSink], metrics: Metrics, **kwargs: Any) -> AlertDispatcher:
    return AlertDispatcher(sinks, metrics, initial_backoff_s=0.02, max_backoff_s=0.1, **kwargs)


# -- PagerDuty ------------------------------------------------------------------------------


async def test_pagerduty_trigger_acknowledge_resolve_share_one_dedup_key(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    async with FakePagerDuty() as pd:
        sink = PagerDutySink(SecretStr(pd.routing_key), url=pd.url)
        async with fast_dispatcher([sink], metrics) as dispatcher:
            alert = make_alert()
            dispatcher.fire(alert)
            dispatcher.fire(alert)  # the same incident again: no second page
            await wait_for(lambda: len(pd.events) == 1, what="trigger")
            dispatcher.acknowledge(alert)
            await wait_for(lambda: len(pd.events) == 2, what="acknowledge")
            dispatcher.resolve(alert)
            await wait_for(lambda: len(pd.events) == 3, what="resolve")
    assert pd.rejected == []
    assert pd.actions() == ["trigger", "acknowledge", "resolve"]
    assert {e["dedup_key"] for e in pd.events} == {"driftwarden/fraud/FeatureDrift"}
    trigger = pd.events[0]
    assert trigger["payload"]["severity"] == "error"  # our "page"
    assert trigger["payload"]["source"] == "driftwarden"
    assert trigger["payload"]["custom_details"]["values"] == {"amount": 0.31}
    assert trigger["links"] == [
        {"href": "https://runbooks.example.com/driftwarden/feature-drift", "text": "Runbook"}
    ]


async def test_pagerduty_summary_is_cut_to_1024_characters(make_alert: MakeAlert) -> None:
    async with FakePagerDuty() as pd:
        sink = PagerDutySink(SecretStr(pd.routing_key), url=pd.url)
        await sink.start()
        try:
            await sink.send(make_alert(summary="x" * 5000, severity="critical"))
        finally:
            await sink.stop()
    [event] = pd.events
    assert len(event["payload"]["summary"]) == 1024
    assert event["payload"]["severity"] == "critical"


async def test_pagerduty_rejection_is_not_retriable(make_alert: MakeAlert) -> None:
    async with FakePagerDuty() as pd:
        sink = PagerDutySink(SecretStr("WRONGKEY"), url=pd.url)
        await sink.start()
        with pytest.raises(AlertSinkError, match="HTTP 400") as caught:
            await sink.send(make_alert())
        await sink.stop()
    assert caught.value.retriable is False
    assert "WRONGKEY" not in str(caught.value)


async def test_sink_that_is_down_queues_reports_and_catches_up(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    health: list[tuple[str, bool]] = []
    async with FakePagerDuty(unavailable=True) as pd:
        sink = PagerDutySink(SecretStr(pd.routing_key), url=pd.url)
        dispatcher = fast_dispatcher(
            [sink], metrics, on_sink_health=lambda name, up: health.append((name, up))
        )
        async with dispatcher:
            for name in ("A", "B", "C"):
                dispatcher.fire(make_alert(alertname=name))
            await wait_for(lambda: health == [("pagerduty", False)], what="sink down")
            assert sample(metrics, "driftwarden_alert_sink_up", sink="pagerduty") == 0
            assert sample(metrics, "driftwarden_alert_queue_depth", sink="pagerduty") == 3
            pd.unavailable = False
            await wait_for(lambda: len(pd.events) == 3, what="caught up")
            await wait_for(lambda: dispatcher.queue_depth("pagerduty") == 0, what="drained")
    assert [e["dedup_key"].rsplit("/", 1)[1] for e in pd.events] == ["A", "B", "C"]
    assert sample(metrics, "driftwarden_alert_sink_up", sink="pagerduty") == 1
    assert sample(metrics, "driftwarden_alert_queue_depth", sink="pagerduty") == 0
    assert health == [("pagerduty", False), ("pagerduty", True)]


async def test_connection_refused_is_retriable(make_alert: MakeAlert) -> None:
    sink = PagerDutySink(SecretStr("k"), url=f"http://127.0.0.1:{free_port()}/v2/enqueue")
    await sink.start()
    with pytest.raises(AlertSinkError) as caught:
        await sink.send(make_alert())
    await sink.stop()
    assert caught.value.retriable is True


# -- Slack ----------------------------------------------------------------------------------


async def test_slack_blocks_show_state_signal_value_and_runbook(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    async with FakeSlack() as slack:
        sink = SlackSink(SecretStr(slack.webhook_url))
        async with fast_dispatcher([sink], metrics) as dispatcher:
            dispatcher.fire(make_alert())
            await wait_for(lambda: len(slack.messages) == 1, what="message")
    assert slack.rejected == []
    [message] = slack.messages
    assert "FIRING" in message["text"]
    fields = [f["text"] for b in message["blocks"] for f in b.get("fields", [])]
    assert "*State*\ndegraded" in fields
    assert "*Signal*\namount" in fields
    assert "*Value*\namount=0.31" in fields
    texts = json.dumps(message["blocks"])
    assert "<https://runbooks.example.com/driftwarden/feature-drift|Runbook>" in texts


async def test_slack_posts_once_per_incident_state_change(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    async with FakeSlack() as slack:
        sink = SlackSink(SecretStr(slack.webhook_url))
        async with fast_dispatcher([sink], metrics) as dispatcher:
            dispatcher.fire(make_alert())
            await wait_for(lambda: len(slack.messages) == 1, what="fire")
            dispatcher.fire(make_alert(values={"amount": 0.35}))  # same state: silent
            dispatcher.fire(make_alert(state="critical", severity="critical"))
            await wait_for(lambda: len(slack.messages) == 2, what="escalation")
            dispatcher.resolve(make_alert())
            await wait_for(lambda: len(slack.messages) == 3, what="resolve")
    states = [f["text"] for m in slack.messages for b in m["blocks"] for f in b.get("fields", [])]
    assert [s for s in states if s.startswith("*State*")] == [
        "*State*\ndegraded",
        "*State*\ncritical",
        "*State*\nresolved",
    ]
    assert slack.messages[2]["text"].startswith("RESOLVED")


async def test_slack_rejection_of_a_bad_webhook_is_not_retriable(make_alert: MakeAlert) -> None:
    async with FakeSlack() as slack:
        sink = SlackSink(SecretStr(slack.webhook_url.replace("XXXX", "YYYY")))
        await sink.start()
        with pytest.raises(AlertSinkError, match="no_service") as caught:
            await sink.send(make_alert())
        await sink.stop()
    assert caught.value.retriable is False


# -- webhook --------------------------------------------------------------------------------


async def test_webhook_body_is_signed_with_hmac_sha256(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    received: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        return web.Response(status=204)

    async with serving(hook) as base_url:
        sink = WebhookSink(f"{base_url}/hook", SecretStr(WEBHOOK_SECRET))
        async with fast_dispatcher([sink], metrics) as dispatcher:
            dispatcher.fire(make_alert())
            await wait_for(lambda: len(received) == 1, what="webhook call")
    [(body, headers)] = received
    signature = headers[SIGNATURE_HEADER]
    assert signature.startswith("sha256=")
    assert verify_signature(WEBHOOK_SECRET.encode(), body, signature)
    assert not verify_signature(WEBHOOK_SECRET.encode(), body + b" ", signature)
    assert not verify_signature(b"another secret", body, signature)
    document = json.loads(body)
    assert document["status"] == "firing"
    assert document["alert"]["model"] == "fraud"
    assert str(document["sent_at"]) == headers[TIMESTAMP_HEADER]


# -- console --------------------------------------------------------------------------------


async def test_console_sink_logs_firing_and_resolved(
    caplog: pytest.LogCaptureFixture, make_alert: MakeAlert
) -> None:
    sink = ConsoleSink()
    with caplog.at_level(logging.INFO, logger="alerts.console"):
        await sink.send(make_alert())
        await sink.send(make_alert(ends_at=make_alert().starts_at))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("alert FIRING fraud/FeatureDrift severity=page state=degraded")
    assert lines[1].startswith("alert RESOLVED fraud/FeatureDrift")
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]


# -- secrets --------------------------------------------------------------------------------


async def test_secrets_never_reach_logs_errors_or_repr(
    caplog: pytest.LogCaptureFixture, metrics: Metrics, make_alert: MakeAlert
) -> None:
    dead_slack = f"http://127.0.0.1:{free_port()}/services/T1/B1/DEADTOKEN0123456789"
    async with FakePagerDuty(unavailable=True) as pd, FakeSlack() as slack:
        wrong_slack = slack.webhook_url.replace("XXXX", "ZZZZ")
        sinks: list[AlertSink] = [
            PagerDutySink(SecretStr(pd.routing_key), url=pd.url),
            PagerDutySink(SecretStr("BADROUTINGKEY999"), url=pd.url, name="pd-bad"),
            SlackSink(SecretStr(dead_slack), name="slack-dead"),
            SlackSink(SecretStr(wrong_slack), name="slack-wrong"),
            WebhookSink(f"http://127.0.0.1:{free_port()}/h", SecretStr(WEBHOOK_SECRET)),
        ]
        secrets = [pd.routing_key, "BADROUTINGKEY999", "DEADTOKEN", "ZZZZ", WEBHOOK_SECRET]
        with caplog.at_level(logging.DEBUG):
            async with fast_dispatcher(sinks, metrics) as dispatcher:
                dispatcher.fire(make_alert())
                await wait_for(
                    lambda: all(
                        sample(metrics, "driftwarden_alert_sink_up", sink=s.name) == 0
                        for s in sinks
                    ),
                    what="every sink failing",
                )
                pd.unavailable = False
                await wait_for(lambda: bool(pd.events), what="good key delivered")
                await dispatcher.stop(flush_timeout_s=0.2)
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert any("not retrying" in r.getMessage() for r in caplog.records)
    shown = caplog.text + "".join(repr(s) for s in sinks)
    for secret in secrets:
        assert secret not in shown


async def test_error_body_that_echoes_the_secret_url_is_redacted(make_alert: MakeAlert) -> None:
    async def echo(request: web.Request) -> web.Response:
        # Proxies and routers often quote the request path in their error pages.
        return web.Response(status=502, text=f"bad gateway for {request.path}")

    async with serving(echo) as base_url:
        sink = SlackSink(SecretStr(f"{base_url}/services/T1/B1/SECRETTOKEN42"))
        await sink.start()
        try:
            with pytest.raises(AlertSinkError, match="HTTP 502") as caught:
                await sink.send(make_alert())
        finally:
            await sink.stop()
    assert caught.value.retriable is True
    assert "SECRETTOKEN42" not in str(caught.value)
    assert "<redacted>" in str(caught.value)
