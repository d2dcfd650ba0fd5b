"""Alert sinks: Alertmanager v2, PagerDuty Events v2, Slack, signed webhook, console.

The daemon builds sinks from :mod:`alerts.config` specs and hands alerts to one
:class:`AlertDispatcher`, which queues, retries, de-duplicates and re-sends them per sink.
"""

from __future__ import annotations

from alerts.alertmanager import AlertmanagerSink
from alerts.base import AcknowledgingSink, Alert, AlertSink, ResendingSink
from alerts.config import AlertSinkSpec, build_sink, build_sinks
from alerts.console import ConsoleSink
from alerts.dispatcher import AlertDispatcher, sink_down_alert
from alerts.pagerduty import PagerDutySink
from alerts.slack import SlackSink
from alerts.webhook import WebhookSink, verify_signature

__all__ = [
    "AcknowledgingSink",
    "Alert",
    "AlertDispatcher",
    "AlertSink",
    "AlertSinkSpec",
    "AlertmanagerSink",
    "ConsoleSink",
    "PagerDutySink",
    "ResendingSink",
    "SlackSink",
    "WebhookSink",
    "build_sink",
    "build_sinks",
    "sink_down_alert",
    "verify_signature",
]
