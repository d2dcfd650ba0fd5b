"""AlertmanagerSink against a real Alertmanager whose webhook receiver is a local test server."""

from __future__ import annotations

from pathlib import Path

import pytest

from alerts.alertmanager import AlertmanagerSink
from alerts.dispatcher import AlertDispatcher
from monitor.observability.metrics import Metrics
from tests.alerts.conftest import MakeAlert
from tests.conftest import wait_for
from tests.services.alertmanager import running_alertmanager

pytestmark = pytest.mark.integration


def delivered(metrics: Metrics, status: str) -> float:
    value = metrics.registry.get_sample_value(
        "driftwarden_alert_deliveries_total",
        {"sink": "alertmanager", "status": status, "outcome": "ok"},
    )
    return value or 0.0


async def test_firing_alert_reaches_the_receiver_with_labels_and_annotations(
    tmp_path: Path, metrics: Metrics, make_alert: MakeAlert
) -> None:
    async with running_alertmanager(tmp_path) as am:
        sink = AlertmanagerSink(am.url, generator_url="http://driftwarden:8080/status")
        async with AlertDispatcher([sink], metrics) as dispatcher:
            dispatcher.fire(make_alert(signals=("amount", "country")))
            await wait_for(lambda: bool(am.receiver.notifications), what="a notification")
    [notification] = am.receiver.notifications
    assert notification["status"] == "firing"
    [alert] = notification["alerts"]
    assert alert["labels"] == {
        "alertname": "FeatureDrift",
        "model": "fraud",
        "signal": "amount,country",
        "severity": "page",
        "model_version": "v7",
    }
    annotations = alert["annotations"]
    assert annotations["summary"] == "fraud: feature amount drifted"
    assert annotations["description"].startswith("PSI of amount is 0.31")
    assert annotations["runbook_url"] == "https://runbooks.example.com/driftwarden/feature-drift"
    assert alert["startsAt"].startswith("2024-05-01T12:00:00")
    assert alert["generatorURL"] == "http://driftwarden:8080/status"


async def test_resolve_delivers_a_resolved_notification_with_ends_at(
    tmp_path: Path, metrics: Metrics, make_alert: MakeAlert
) -> None:
    async with running_alertmanager(tmp_path) as am:
        async with AlertDispatcher([AlertmanagerSink(am.url)], metrics) as dispatcher:
            dispatcher.fire(make_alert())
            await wait_for(lambda: bool(am.receiver.alerts("firing")), what="firing")
            dispatcher.resolve(make_alert())
            await wait_for(lambda: bool(am.receiver.alerts("resolved")), what="resolved")
        assert await am.alerts() == []
    [resolved] = am.receiver.alerts("resolved")
    assert resolved["labels"]["alertname"] == "FeatureDrift"
    assert not resolved["endsAt"].startswith("0001")


async def test_one_incident_is_one_notification_despite_re_sends(
    tmp_path: Path, metrics: Metrics, make_alert: MakeAlert
) -> None:
    async with running_alertmanager(tmp_path) as am:
        sink = AlertmanagerSink(am.url, resend_interval_s=0.2)
        async with AlertDispatcher([sink], metrics) as dispatcher:
            dispatcher.fire(make_alert())
            await wait_for(lambda: bool(am.receiver.notifications), what="a notification")
            # Ten re-sends span two seconds, two of Alertmanager's group intervals.
            await wait_for(lambda: delivered(metrics, "firing") >= 10, what="re-sends")
            assert len(am.receiver.notifications) == 1
            dispatcher.resolve(make_alert())
            await wait_for(lambda: bool(am.receiver.alerts("resolved")), what="resolved")
    assert [n["status"] for n in am.receiver.notifications] == ["firing", "resolved"]


async def test_severity_change_replaces_the_alert_instead_of_adding_one(
    tmp_path: Path, metrics: Metrics, make_alert: MakeAlert
) -> None:
    async with (
        running_alertmanager(tmp_path) as am,
        AlertDispatcher([AlertmanagerSink(am.url)], metrics) as dispatcher,
    ):
        dispatcher.fire(make_alert(severity="warning"))
        await wait_for(lambda: delivered(metrics, "firing") == 1, what="first post")
        dispatcher.fire(make_alert(severity="critical"))
        await wait_for(lambda: delivered(metrics, "firing") == 2, what="second post")
        active = [a for a in await am.alerts() if a["status"]["state"] == "active"]
    assert [a["labels"]["severity"] for a in active] == ["critical"]
