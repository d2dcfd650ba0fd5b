"""The generic HTTP flag backend against a real local aiohttp flag service.

Protects the templated body, the auth header taken from the environment, reading back over GET
and which failures are worth retrying.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import TypeAdapter

from monitor.errors import FlagBackendError
from monitor.flags.config import FlagBackendSpec, build_backend
from monitor.flags.http import HttpFlagBackend
from tests.flags.flag_service import FlagService

BODY = '{"key": "{flag}", "value": {value}, "source": "driftwarden"}'


@pytest.fixture
async def service() -> AsyncIterator[FlagService]:
    flag_service = FlagService(token="s3cret")
    await flag_service.start()
    try:
        yield flag_service
    finally:
        await flag_service.stop()


def backend_for(service: FlagService, *, readable: bool = True) -> HttpFlagBackend:
    spec: FlagBackendSpec = TypeAdapter(FlagBackendSpec).validate_python(
        {
            "type": "http",
            "name": "flagsvc",
            "url": f"{service.url}/v1/flags/{{flag}}",
            "body": BODY,
            "auth_env": "FLAGSVC_AUTH",
            "get_url": f"{service.url}/v1/flags/{{flag}}" if readable else None,
            "get_value_path": "data.value",
        }
    )
    backend = build_backend(spec, environ={"FLAGSVC_AUTH": f"Bearer {service.token}"})
    assert isinstance(backend, HttpFlagBackend)
    return backend


async def test_set_sends_the_templated_body_with_the_auth_header_from_env(
    service: FlagService,
) -> None:
    async with backend_for(service) as backend:
        await backend.set("fraud-fallback", True)
        await backend.set("fraud-mode", "human-review")

    assert service.writes == [
        {
            "flag": "fraud-fallback",
            "body": {"key": "fraud-fallback", "value": True, "source": "driftwarden"},
            "content_type": "application/json",
        },
        {
            "flag": "fraud-mode",
            "body": {"key": "fraud-mode", "value": "human-review", "source": "driftwarden"},
            "content_type": "application/json",
        },
    ]


async def test_get_reads_the_value_at_the_configured_path(service: FlagService) -> None:
    service.flags["fraud-threshold"] = 0.7
    async with backend_for(service) as backend:
        assert await backend.get("fraud-threshold") == 0.7
        assert await backend.get("never-set") is None


async def test_set_skips_the_write_when_the_service_already_holds_the_value(
    service: FlagService,
) -> None:
    service.flags["fraud-fallback"] = True
    async with backend_for(service) as backend:
        await backend.set("fraud-fallback", True)
        await backend.set("fraud-fallback", False)

    assert [w["body"]["value"] for w in service.writes] == [False]


async def test_without_get_url_get_returns_the_last_value_written(service: FlagService) -> None:
    async with backend_for(service, readable=False) as backend:
        assert await backend.get("fraud-mode") is None
        await backend.set("fraud-mode", "rules")
        assert await backend.get("fraud-mode") == "rules"


async def test_server_errors_are_retriable_and_refusals_are_not(service: FlagService) -> None:
    async with backend_for(service) as backend:
        service.failing_status = 503
        with pytest.raises(FlagBackendError) as unavailable:
            await backend.set("fraud-fallback", True)
        service.failing_status = 403
        with pytest.raises(FlagBackendError) as refused:
            await backend.set("fraud-fallback", True)

    assert unavailable.value.retriable is True
    assert "503" in str(unavailable.value)
    assert refused.value.retriable is False
    assert "403" in str(refused.value)


async def test_an_unreachable_service_is_a_retriable_error(service: FlagService) -> None:
    backend = backend_for(service)
    await service.stop()
    async with backend:
        with pytest.raises(FlagBackendError) as caught:
            await backend.set("fraud-fallback", True)
    assert caught.value.retriable is True


def test_the_auth_value_is_not_in_the_backends_repr(service: FlagService) -> None:
    assert service.token not in repr(backend_for(service))
