"""Fixtures of the flag backend tests (PostgreSQL + unleash-server live in tests/conftest.py)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from monitor.observability.metrics import Metrics


@pytest.fixture
def metrics() -> Metrics:
    return Metrics.create(CollectorRegistry())
