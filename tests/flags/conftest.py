"""Fixtures of the flag backend tests: a session-wide PostgreSQL + unleash-server pair.

Unleash takes seconds to start, so one server serves every test; each test uses its own flags.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from monitor.metrics import Metrics
from tests.services.postgres import PostgresServer, running_postgres
from tests.services.unleash import UnleashServer, running_unleash


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def unleash_server(postgres_server: PostgresServer) -> Iterator[UnleashServer]:
    with running_unleash(postgres_server) as server:
        yield server


@pytest.fixture
def metrics() -> Metrics:
    return Metrics.create(CollectorRegistry())
