"""The flag actuator over a real HTTP flag service that the tests switch off and on.

Protects that requests never block, that a down backend shows on /metrics and catches up,
coalescing, pins over automation, the queue bound and flushing on stop.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from monitor.flags.actuator import FlagActuator
from monitor.flags.http import HttpFlagBackend
from monitor.observability.metrics import Metrics
from tests.conftest import wait_for
from tests.flags.flag_service import FlagService

BODY = '{"key": "{flag}", "value": {value}}'
LABELS = {"backend": "flagsvc"}


@pytest.fixture
async def service() -> AsyncIterator[FlagService]:
    flag_service = FlagService(token="t0ken")
    await flag_service.start()
    try:
        yield flag_service
    finally:
        await flag_service.stop()


class Recorder:
    def __init__(self) -> None:
        self.health: list[tuple[str, bool]] = []
        self.applied: list[tuple[str, object, str]] = []

    def on_health(self, name: str, up: bool) -> None:
        self.health.append((name, up))

    def on_applied(self, flag: str, value: object, key: str) -> None:
        self.applied.append((flag, value, key))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def actuator(
    service: FlagService, metrics: Metrics, recorder: Recorder
) -> AsyncIterator[FlagActuator]:
    backend = HttpFlagBackend(
        f"{service.url}/v1/flags/{{flag}}",
        body=BODY,
        auth_value=f"Bearer {service.token}",
        name="flagsvc",
        timeout_s=2.0,
    )
    flag_actuator = FlagActuator(
        backend,
        metrics,
        queue_size=3,
        initial_backoff_s=0.02,
        max_backoff_s=0.1,
        on_backend_health=recorder.on_health,
        on_applied=recorder.on_applied,
    )
    await flag_actuator.start()
    try:
        yield flag_actuator
    finally:
        await flag_actuator.stop(flush_timeout_s=0.5)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {**LABELS, **labels})


async def test_backend_down_never_blocks_shows_on_metrics_and_catches_up(
    actuator: FlagActuator, service: FlagService, metrics: Metrics, recorder: Recorder
) -> None:
    service.failing_status = 503

    started = time.perf_counter()
    actuator.request("fraud-fallback", True, key="fraud:degraded:1")
    assert time.perf_counter() - started < 0.01

    await wait_for(
        lambda: (sample(metrics, "driftwarden_flag_writes_total", outcome="retry") or 0) >= 3,
        what="three retries",
    )
    assert sample(metrics, "driftwarden_flag_backend_up") == 0
    assert sample(metrics, "driftwarden_flag_queue_depth") == 1
    assert recorder.health == [("flagsvc", False)]
    assert service.flags == {}

    service.failing_status = None
    await wait_for(
        lambda: service.flags == {"fraud-fallback": True}, what=lambda: f"flags {service.flags}"
    )
    await wait_for(lambda: sample(metrics, "driftwarden_flag_queue_depth") == 0, what="queue empty")
    assert sample(metrics, "driftwarden_flag_backend_up") == 1
    assert sample(metrics, "driftwarden_flag_writes_total", outcome="ok") == 1
    assert recorder.health == [("flagsvc", False), ("flagsvc", True)]
    assert recorder.applied == [("fraud-fallback", True, "fraud:degraded:1")]
    assert actuator.applied() == {"fraud-fallback": True}


async def test_requests_for_one_flag_coalesce_and_the_latest_wins(
    actuator: FlagActuator, service: FlagService, metrics: Metrics
) -> None:
    service.failing_status = 503
    actuator.request("fraud-mode", "rules", key="k1")
    await wait_for(lambda: sample(metrics, "driftwarden_flag_backend_up") == 0, what="backend down")
    actuator.request("fraud-mode", "human-review", key="k2")
    actuator.request("fraud-mode", "off", key="k3")
    assert sample(metrics, "driftwarden_flag_queue_depth") == 1

    service.failing_status = None
    await wait_for(lambda: actuator.pending() == [], what="queue drained")

    assert [w["body"]["value"] for w in service.writes] == ["off"]


async def test_a_pin_wins_over_automation_until_released(
    actuator: FlagActuator, service: FlagService, recorder: Recorder
) -> None:
    actuator.pin("fraud-fallback", False, key="operator:alice")
    await wait_for(lambda: service.flags.get("fraud-fallback") is False, what="fraud-fallback off")

    actuator.request("fraud-fallback", True, key="fraud:degraded:2")
    actuator.request("other-flag", True, key="other:1")
    # The worker writes in request order: once other-flag landed, nothing is left for the pin.
    await wait_for(lambda: service.flags.get("other-flag") is True, what="other-flag on")
    assert actuator.pending() == []
    assert service.flags["fraud-fallback"] is False
    assert actuator.desired()["fraud-fallback"] is True
    assert actuator.pins() == {"fraud-fallback": False}

    actuator.unpin("fraud-fallback")
    await wait_for(lambda: service.flags.get("fraud-fallback") is True, what="fraud-fallback on")
    assert ("fraud-fallback", True, "fraud:degraded:2") in recorder.applied
    assert recorder.applied[0] == ("fraud-fallback", False, "operator:alice")


async def test_unpin_without_an_automation_request_keeps_the_pinned_value(
    actuator: FlagActuator, service: FlagService
) -> None:
    actuator.pin("fraud-fallback", True)
    await wait_for(lambda: service.flags.get("fraud-fallback") is True, what="fraud-fallback on")

    actuator.unpin("fraud-fallback")

    assert actuator.pending() == []
    assert service.flags["fraud-fallback"] is True


async def test_a_full_queue_drops_new_flags_and_counts_them(
    actuator: FlagActuator, service: FlagService, metrics: Metrics
) -> None:
    service.failing_status = 503
    for i in range(4):
        actuator.request(f"flag-{i}", True, key=f"k{i}")
    actuator.request("flag-0", False, key="k0b")  # coalesces: no room needed

    assert sample(metrics, "driftwarden_flag_writes_total", outcome="dropped") == 1
    assert sample(metrics, "driftwarden_flag_queue_depth") == 3
    assert actuator.pending() == ["flag-0", "flag-1", "flag-2"]


async def test_a_refused_write_is_counted_failed_and_not_retried(
    actuator: FlagActuator, service: FlagService, metrics: Metrics, recorder: Recorder
) -> None:
    service.failing_status = 400
    actuator.request("fraud-fallback", True, key="k")

    await wait_for(lambda: actuator.pending() == [], what="write given up")
    assert sample(metrics, "driftwarden_flag_writes_total", outcome="failed") == 1
    assert sample(metrics, "driftwarden_flag_writes_total", outcome="retry") == 0
    assert sample(metrics, "driftwarden_flag_backend_up") == 0
    assert recorder.health == [("flagsvc", False)]


async def test_stop_flushes_pending_writes(
    actuator: FlagActuator, service: FlagService, metrics: Metrics
) -> None:
    actuator.request("fraud-fallback", True, key="k1")
    actuator.request("fraud-mode", "rules", key="k2")

    await actuator.stop(flush_timeout_s=5)

    assert service.flags == {"fraud-fallback": True, "fraud-mode": "rules"}


async def test_stop_returns_within_the_flush_timeout_when_the_backend_is_down(
    actuator: FlagActuator, service: FlagService
) -> None:
    service.failing_status = 503
    actuator.request("fraud-fallback", True, key="k1")

    started = time.monotonic()
    await actuator.stop(flush_timeout_s=0.3)

    assert time.monotonic() - started < 1.0
    assert actuator.pending() == ["fraud-fallback"]


async def test_current_falls_back_to_the_last_written_value_when_the_backend_is_down(
    service: FlagService, metrics: Metrics
) -> None:
    backend = HttpFlagBackend(
        f"{service.url}/v1/flags/{{flag}}",
        body=BODY,
        auth_value=f"Bearer {service.token}",
        get_url=f"{service.url}/v1/flags/{{flag}}",
        get_value_path="data.value",
        name="flagsvc",
    )
    async with FlagActuator(backend, metrics, initial_backoff_s=0.02) as actuator:
        service.flags["fraud-mode"] = "ml"
        assert await actuator.current("fraud-mode") == "ml"
        actuator.request("fraud-mode", "rules", key="k")
        await wait_for(
            lambda: actuator.applied() == {"fraud-mode": "rules"},
            what=lambda: f"fraud-mode=rules applied (applied: {actuator.applied()})",
        )

        service.failing_status = 503
        assert await actuator.current("fraud-mode") == "rules"
