"""AlertDispatcher against in-process sinks: dedup, queueing, retries, health, resends, flush."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from alerts.base import Alert
from alerts.dispatcher import AlertDispatcher, sink_down_alert
from alerts.errors import AlertSinkError
from monitor.observability.metrics import Metrics
from tests.alerts.conftest import MakeAlert
from tests.conftest import wait_for


class RecordingSink:
    """Records (status, alert); ``failure`` makes every delivery raise it; ``hang`` blocks."""

    def __init__(self, name: str = "rec", *, min_severity: str = "info") -> None:
        self.name = name
        self.min_severity = min_severity
        self.received: list[tuple[str, Alert]] = []
        self.attempts = 0
        self.failure: AlertSinkError | None = None
        self.hang = False
        self.started = self.stopped = 0

    async def start(self) -> None:
        self.started += 1

    async def stop(self) -> None:
        self.stopped += 1

    async def send(self, alert: Alert) -> None:
        await self._deliver("resolved" if alert.resolved else "firing", alert)

    async def _deliver(self, status: str, alert: Alert) -> None:
        self.attempts += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.failure is not None:
            raise self.failure
        self.received.append((status, alert))

    def statuses(self) -> list[str]:
        return [status for status, _ in self.received]


class AckSink(RecordingSink):
    async def acknowledge(self, alert: Alert) -> None:
        await self._deliver("acknowledged", alert)


class ResendSink(RecordingSink):
    resend_interval_s = 0.05


def deliveries(metrics: Metrics, sink: str, status: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "driftwarden_alert_deliveries_total",
        {"sink": sink, "status": status, "outcome": outcome},
    )
    return value or 0.0


def gauge(metrics: Metrics, name: str, sink: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"sink": sink})


def fast(sinks: list[RecordingSink], metrics: Metrics, **kwargs: Any) -> AlertDispatcher:
    return AlertDispatcher(sinks, metrics, initial_backoff_s=0.01, max_backoff_s=0.05, **kwargs)


async def test_firing_the_same_incident_twice_notifies_once(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    sink = RecordingSink()
    async with fast([sink], metrics) as dispatcher:
        dispatcher.fire(make_alert())
        dispatcher.fire(make_alert(values={"amount": 0.4}))
        await wait_for(lambda: dispatcher.queue_depth("rec") == 0, what="queue drained")
        assert sink.statuses() == ["firing"]
        assert dispatcher.active()[0].values == {"amount": 0.4}
    assert deliveries(metrics, "rec", "firing", "ok") == 1


async def test_state_change_notifies_again_and_keeps_the_start_time(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    sink = RecordingSink()
    first = make_alert()
    async with fast([sink], metrics) as dispatcher:
        dispatcher.fire(first)
        await wait_for(lambda: len(sink.received) == 1, what="first notification")
        dispatcher.fire(make_alert(state="critical", starts_at=datetime.now(UTC)))
        await wait_for(lambda: len(sink.received) == 2, what="state change notification")
    assert [a.state for _, a in sink.received] == ["degraded", "critical"]
    assert sink.received[1][1].starts_at == first.starts_at


async def test_resolve_sends_the_last_fired_alert_with_ends_at(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    sink = RecordingSink()
    async with fast([sink], metrics) as dispatcher:
        dispatcher.fire(make_alert(severity="critical"))
        await wait_for(lambda: len(sink.received) == 1, what="fire")
        dispatcher.resolve(make_alert(severity="ignored", values={"amount": 0.05}))
        dispatcher.resolve(make_alert())  # no longer active: a no-op
        await wait_for(lambda: len(sink.received) == 2, what="resolve")
        assert dispatcher.active() == []
    status, resolved = sink.received[1]
    assert status == "resolved"
    assert resolved.ends_at is not None
    assert resolved.severity == "critical"
    assert resolved.values == {"amount": 0.05}
    assert len(sink.received) == 2


async def test_resolve_before_delivery_supersedes_the_pending_fire(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    sink = RecordingSink()
    dispatcher = fast([sink], metrics)
    dispatcher.fire(make_alert())
    dispatcher.resolve(make_alert())
    assert dispatcher.queue_depth("rec") == 0
    async with dispatcher:
        dispatcher.fire(make_alert(alertname="Other"))
        await wait_for(lambda: len(sink.received) == 1, what="the other alert")
    assert [a.alertname for _, a in sink.received] == ["Other"]
    assert deliveries(metrics, "rec", "firing", "superseded") == 1
    assert deliveries(metrics, "rec", "resolved", "superseded") == 1


async def test_state_changes_while_a_sink_is_down_coalesce_to_the_latest(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    sink = RecordingSink()
    sink.failure = AlertSinkError("rec: HTTP 503", retriable=True)
    async with fast([sink], metrics, queue_size=3) as dispatcher:
        dispatcher.fire(make_alert(state="warn"))
        await wait_for(lambda: sink.attempts >= 1, what="first attempt")
        for i in range(50):
            dispatcher.fire(make_alert(state=("degraded", "critical")[i % 2]))
        # The latest state pending, and the overtaken "warn" until its backoff ends.
        assert dispatcher.queue_depth("rec") == 2
        sink.failure = None
        await wait_for(lambda: dispatcher.queue_depth("rec") == 0, what="drained")
    # The retried "warn" was overtaken too: the sink hears the latest state only.
    assert [a.state for _, a in sink.received] == ["critical"]
    assert deliveries(metrics, "rec", "firing", "dropped") == 0
    assert deliveries(metrics, "rec", "firing", "superseded") == 50


async def test_full_queue_drops_the_oldest_delivery_and_counts_it(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    sink = RecordingSink()
    dispatcher = fast([sink], metrics, queue_size=2)
    for name in ("A", "B", "C"):
        dispatcher.fire(make_alert(alertname=name))
    assert gauge(metrics, "driftwarden_alert_queue_depth", "rec") == 2
    assert deliveries(metrics, "rec", "firing", "dropped") == 1
    async with dispatcher:
        await wait_for(lambda: len(sink.received) == 2, what="queued deliveries")
    assert [a.alertname for _, a in sink.received] == ["B", "C"]


async def test_fire_never_blocks_while_a_sink_hangs(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    hung, healthy = RecordingSink("hung"), RecordingSink("healthy")
    hung.hang = True
    async with AlertDispatcher([hung, healthy], metrics, delivery_timeout_s=60) as dispatcher:
        began = time.perf_counter()
        for i in range(200):
            dispatcher.fire(make_alert(alertname=f"A{i}"))
        elapsed = time.perf_counter() - began
        await wait_for(lambda: len(healthy.received) == 200, what="healthy sink served")
        assert dispatcher.queue_depth("hung") == 200
        await dispatcher.stop(flush_timeout_s=0.1)
    assert elapsed < 0.5
    assert deliveries(metrics, "hung", "firing", "dropped") == 200


async def test_retriable_failure_is_retried_until_the_sink_recovers(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    sink = RecordingSink()
    sink.failure = AlertSinkError("rec: HTTP 503", retriable=True)
    health: list[tuple[str, bool]] = []
    async with fast([sink], metrics, on_sink_health=lambda n, up: health.append((n, up))) as d:
        d.fire(make_alert(alertname="A"))
        d.fire(make_alert(alertname="B"))
        await wait_for(lambda: sink.attempts >= 3, what="retries")
        assert gauge(metrics, "driftwarden_alert_sink_up", "rec") == 0
        assert gauge(metrics, "driftwarden_alert_queue_depth", "rec") == 2
        assert health == [("rec", False)]
        sink.failure = None
        await wait_for(lambda: len(sink.received) == 2, what="catch up")
    assert gauge(metrics, "driftwarden_alert_sink_up", "rec") == 1
    assert gauge(metrics, "driftwarden_alert_queue_depth", "rec") == 0
    assert health == [("rec", False), ("rec", True)]
    assert deliveries(metrics, "rec", "firing", "retry") >= 2


async def test_non_retriable_failure_is_given_up_at_once(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    sink = RecordingSink()
    sink.failure = AlertSinkError("rec: HTTP 400", retriable=False)
    async with fast([sink], metrics) as dispatcher:
        dispatcher.fire(make_alert())
        await wait_for(lambda: dispatcher.queue_depth("rec") == 0, what="given up")
    assert sink.attempts == 1
    assert deliveries(metrics, "rec", "firing", "failed") == 1


async def test_min_severity_filters_fires_and_resolve_follows_the_fire(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    pager = RecordingSink("pager", min_severity="critical")
    chat = RecordingSink("chat")
    async with fast([pager, chat], metrics) as dispatcher:
        dispatcher.fire(make_alert(alertname="Low", severity="warning"))
        dispatcher.fire(make_alert(alertname="High", severity="critical"))
        await wait_for(lambda: len(chat.received) == 2, what="chat fired")
        # Severity drops while the incident is open: the pager still gets its resolve.
        dispatcher.fire(make_alert(alertname="High", severity="warning"))
        await wait_for(lambda: len(chat.received) == 3, what="chat updated")
        dispatcher.resolve(make_alert(alertname="High"))
        dispatcher.resolve(make_alert(alertname="Low"))
        await wait_for(lambda: len(chat.received) == 5, what="chat resolved")
        await wait_for(lambda: len(pager.received) == 2, what="pager resolved")
    assert [(s, a.alertname) for s, a in pager.received] == [
        ("firing", "High"),
        ("resolved", "High"),
    ]


async def test_resending_sink_hears_a_firing_alert_again_until_resolved(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    am, other = ResendSink("am"), RecordingSink("other")
    async with fast([am, other], metrics) as dispatcher:
        dispatcher.fire(make_alert(alertname="A"))
        await wait_for(lambda: len(am.received) >= 4, what="re-sends of A")
        dispatcher.resolve(make_alert(alertname="A"))
        dispatcher.fire(make_alert(alertname="B"))
        # B's re-sends prove that several resend periods passed after A was resolved.
        await wait_for(
            lambda: sum(a.alertname == "B" for _, a in am.received) >= 4, what="re-sends of B"
        )
    after_resolve = am.received[am.statuses().index("resolved") :]
    assert [(s, a.alertname) for s, a in after_resolve if a.alertname == "A"] == [("resolved", "A")]
    assert other.statuses() == ["firing", "resolved", "firing"]


async def test_acknowledge_reaches_only_sinks_that_acknowledge(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    pager, chat = AckSink("pager"), RecordingSink("chat")
    async with fast([pager, chat], metrics) as dispatcher:
        assert dispatcher.acknowledge(make_alert()) is False
        dispatcher.fire(make_alert())
        assert dispatcher.acknowledge(make_alert()) is True
        await wait_for(lambda: len(pager.received) == 2, what="ack")
    assert pager.statuses() == ["firing", "acknowledged"]
    assert chat.statuses() == ["firing"]


async def test_stop_flushes_pending_deliveries_and_stops_sinks(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    sink = RecordingSink()
    dispatcher = fast([sink], metrics)
    await dispatcher.start()
    await dispatcher.start()
    for i in range(20):
        dispatcher.fire(make_alert(alertname=f"A{i}"))
    await dispatcher.stop(flush_timeout_s=5)
    await dispatcher.stop()
    assert len(sink.received) == 20
    assert (sink.started, sink.stopped) == (1, 1)


async def test_stop_gives_up_at_the_flush_deadline_and_counts_what_is_left(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    sink = RecordingSink()
    sink.failure = AlertSinkError("rec: down", retriable=True)
    dispatcher = AlertDispatcher([sink], metrics, initial_backoff_s=30, max_backoff_s=60)
    await dispatcher.start()
    dispatcher.fire(make_alert(alertname="A"))
    dispatcher.fire(make_alert(alertname="B"))
    await wait_for(lambda: sink.attempts >= 1, what="first attempt")
    began = time.monotonic()
    await dispatcher.stop(flush_timeout_s=0.3)
    assert time.monotonic() - began < 2
    # The long backoff was cut short: the flush retried more than once.
    assert sink.attempts >= 2
    assert deliveries(metrics, "rec", "firing", "dropped") == 2
    assert gauge(metrics, "driftwarden_alert_queue_depth", "rec") == 0


async def test_sink_down_self_alert_reaches_the_other_sinks(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    broken, chat = RecordingSink("broken"), RecordingSink("chat")
    broken.failure = AlertSinkError("broken: HTTP 503", retriable=True)

    def on_health(name: str, up: bool) -> None:
        if up:
            dispatcher.resolve(sink_down_alert(name))
        else:
            dispatcher.fire(sink_down_alert(name))

    dispatcher = fast([broken, chat], metrics, on_sink_health=on_health)
    async with dispatcher:
        dispatcher.fire(make_alert())
        await wait_for(lambda: len(chat.received) == 2, what="self-alert")
        assert chat.received[1][1].labels == {"sink": "broken"}
        broken.failure = None
        await wait_for(lambda: len(chat.received) == 3, what="self-alert resolved")
    assert chat.statuses() == ["firing", "firing", "resolved"]
    # The broken sink gets the model's alert late, and never its own self-alert.
    assert [a.alertname for _, a in broken.received] == ["FeatureDrift"]


def test_duplicate_sink_names_are_refused(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="distinct"):
        AlertDispatcher([RecordingSink("x"), RecordingSink("x")], metrics)


async def test_adopted_incident_is_resolved_without_a_new_page(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    """A replica taking over a model from a checkpoint resolves the incident it adopted."""
    sink = RecordingSink()
    async with fast([sink], metrics) as dispatcher:
        alert = make_alert()
        dispatcher.adopt(alert)
        assert dispatcher.active() == [alert]
        dispatcher.resolve(alert)
        await wait_for(lambda: sink.statuses() == ["resolved"], what="the resolve")
        assert dispatcher.active() == []


async def test_released_incident_is_forgotten_silently(
    metrics: Metrics, make_alert: MakeAlert
) -> None:
    """A replica that lost a model's partition neither resolves nor re-sends its incident."""
    sink = RecordingSink()
    async with fast([sink], metrics) as dispatcher:
        alert = make_alert()
        dispatcher.fire(alert)
        await wait_for(lambda: sink.statuses() == ["firing"], what="the page")
        dispatcher.release(alert.model)
        dispatcher.resolve(alert)
        assert dispatcher.active() == []
        await wait_for(lambda: dispatcher.queue_depth("rec") == 0, what="queue drained")
    assert sink.statuses() == ["firing"]
