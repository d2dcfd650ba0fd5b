"""The Unleash backend end to end: real PostgreSQL + unleash-server, checked with UnleashClient.

Protects that a flip is what an SDK sees, that values read back, that writes are idempotent, and
that the actuator catches up after Unleash was down.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from UnleashClient import UnleashClient  # type: ignore[attr-defined]

from monitor.errors import FlagBackendError
from monitor.flags.actuator import FlagActuator
from monitor.flags.unleash import UnleashBackend
from monitor.observability.metrics import Metrics
from tests.conftest import wait_for
from tests.services.unleash import UnleashServer

pytestmark = pytest.mark.integration


def new_flag(stem: str) -> str:
    # One server serves the whole session: each test works on flags of its own.
    return f"{stem}-{secrets.token_hex(3)}"


@pytest.fixture
def backend(unleash_server: UnleashServer) -> UnleashBackend:
    return UnleashBackend(
        unleash_server.url,
        unleash_server.admin_token,
        environment=unleash_server.environment,
        timeout_s=2.0,
    )


@pytest.fixture
def sdk(unleash_server: UnleashServer) -> Iterator[UnleashClient]:
    """The Python SDK as a service would run it, refreshing every second."""
    with tempfile.TemporaryDirectory() as cache:
        client = UnleashClient(
            url=f"{unleash_server.url}/api",
            app_name=f"driftwarden-test-{secrets.token_hex(3)}",
            custom_headers={"Authorization": unleash_server.client_token},
            refresh_interval=1,
            disable_metrics=True,
            disable_registration=True,
            cache_directory=cache,
        )
        client.initialize_client()
        try:
            yield client
        finally:
            client.destroy()


def counting_writes(backend: UnleashBackend) -> list[str]:
    """Record every non-GET Admin API call the backend makes."""
    writes: list[str] = []
    call = backend._call

    async def spy(method: str, path: str, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        if method != "GET":
            writes.append(f"{method} {path}")
        return await call(method, path, *args, **kwargs)

    backend._call = spy  # type: ignore[method-assign]
    return writes


async def test_boolean_set_flips_the_toggle_the_sdk_sees(
    backend: UnleashBackend, sdk: UnleashClient
) -> None:
    flag = new_flag("fraud-fallback")
    async with backend:
        await backend.set(flag, True)
        await wait_for(lambda: sdk.is_enabled(flag), what=f"SDK sees {flag} on")
        assert await backend.get(flag) is True

        await backend.set(flag, False)
        await wait_for(lambda: sdk.is_enabled(flag) is False, what="SDK sees off")
        assert await backend.get(flag) is False


async def test_value_set_is_the_variant_the_sdk_returns_and_true_restores_the_toggle(
    backend: UnleashBackend, sdk: UnleashClient, unleash_server: UnleashServer
) -> None:
    flag = new_flag("fraud-mode")
    async with backend:
        await backend.set(flag, True)  # the service's own plain toggle
        await backend.set(flag, "human-review")
        await wait_for(
            lambda: sdk.get_variant(flag)["name"] == "human-review",
            what=lambda: (
                f"SDK returns the human-review variant (it returns {sdk.get_variant(flag)})"
            ),
        )
        variant = sdk.get_variant(flag)
        assert variant["payload"] == {"type": "string", "value": "human-review"}
        assert await backend.get(flag) == "human-review"

        await backend.set(flag, 0.25)
        assert await backend.get(flag) == 0.25

        await backend.set(flag, True)
        await wait_for(
            lambda: (
                sdk.get_variant(flag)["name"] == "disabled"
                and sdk.get_variant(flag)["feature_enabled"] is True
            ),
            what=lambda: (
                f"SDK back to the plain enabled toggle (it returns {sdk.get_variant(flag)})"
            ),
        )
    state: Any = unleash_server.admin(
        "GET",
        f"/api/admin/projects/default/features/{flag}/environments/{unleash_server.environment}",
    )
    assert [s["title"] for s in state["strategies"]] == [None]


async def test_setting_the_current_value_writes_nothing(backend: UnleashBackend) -> None:
    flag = new_flag("fraud-idempotent")
    async with backend:
        await backend.set(flag, True)
        await backend.set(flag, "rules")
        writes = counting_writes(backend)

        await backend.set(flag, "rules")
        assert writes == []
        await backend.set(flag, False)
        await backend.set(flag, False)

    assert len(writes) == 2  # remove our strategy, turn off: once


async def test_missing_feature_without_create_missing_is_not_retriable(
    unleash_server: UnleashServer,
) -> None:
    backend = UnleashBackend(
        unleash_server.url,
        unleash_server.admin_token,
        environment=unleash_server.environment,
        create_missing=False,
    )
    async with backend:
        assert await backend.get("no-such-feature") is None
        with pytest.raises(FlagBackendError) as caught:
            await backend.set("no-such-feature", True)
    assert caught.value.retriable is False


async def test_a_rejected_token_is_not_retriable(unleash_server: UnleashServer) -> None:
    backend = UnleashBackend(unleash_server.url, "*:*.wrong", environment="development")
    async with backend:
        with pytest.raises(FlagBackendError) as caught:
            await backend.set(new_flag("x"), True)
    assert caught.value.retriable is False
    assert "wrong" not in repr(backend)


async def test_actuator_catches_up_when_unleash_comes_back(
    backend: UnleashBackend, sdk: UnleashClient, unleash_server: UnleashServer, metrics: Metrics
) -> None:
    flag = new_flag("fraud-outage")
    health: list[tuple[str, bool]] = []
    actuator = FlagActuator(
        backend,
        metrics,
        initial_backoff_s=0.05,
        max_backoff_s=0.2,
        on_backend_health=lambda name, up: health.append((name, up)),
    )
    labels = {"backend": "unleash"}
    sample = metrics.registry.get_sample_value
    await actuator.start()
    try:
        unleash_server.stop()
        actuator.request(flag, True, key="fraud:degraded:1")
        await wait_for(
            lambda: sample("driftwarden_flag_backend_up", labels) == 0,
            what="backend_up drops to 0",
        )
        assert sample("driftwarden_flag_queue_depth", labels) == 1
        assert health == [("unleash", False)]

        unleash_server.start()
        await wait_for(lambda: sdk.is_enabled(flag), timeout=20, what="SDK sees the flip")
        assert sample("driftwarden_flag_backend_up", labels) == 1
        assert sample("driftwarden_flag_queue_depth", labels) == 0
        assert health == [("unleash", False), ("unleash", True)]
    finally:
        unleash_server.start()
        await actuator.stop(flush_timeout_s=1)
