"""Fixtures of the alert sink tests: a fresh metrics registry and an Alert factory."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from alerts.base import Alert
from monitor.observability.metrics import Metrics

MakeAlert = Callable[..., Alert]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics.create(CollectorRegistry())


@pytest.fixture
def make_alert() -> MakeAlert:
    def make(**overrides: Any) -> Alert:
        fields: dict[str, Any] = {
            "model": "fraud",
            "alertname": "FeatureDrift",
            "severity": "page",
            "state": "degraded",
            "signals": ("amount",),
            "summary": "fraud: feature amount drifted",
            "description": "PSI of amount is 0.31 over the last 5000 events (threshold 0.2).",
            "runbook_url": "https://runbooks.example.com/driftwarden/feature-drift",
            "starts_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
            "values": {"amount": 0.31},
            "labels": {"model_version": "v7"},
        }
        fields.update(overrides)
        return Alert(**fields)

    return make
