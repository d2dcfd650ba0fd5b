"""The daemon's components start in order and a failed start stops, in reverse order, every one
that had already started, whichever component fails; the error surfaces (an exception, or exit
1 with the reason logged for the broker and the checkpoint store).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.kafka.backoff import Backoff
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker
from tests.conftest import kafka_section
from tests.core.kafka_helpers import create_topic

#: The daemon's components, in start order.
START_ORDER = ("heartbeat", "audit", "http", "side_writer", "consumer", "store", "actions")
#: Whose failed start the daemon reports as exit 1 and a logged reason (retried, for Kafka).
EXIT_1 = {"side_writer", "consumer", "store"}


class InjectedStartError(RuntimeError):
    pass


def _components(daemon: Daemon) -> dict[str, tuple[Any, str, str]]:
    assert daemon.store is not None
    return {
        "heartbeat": (daemon.heartbeat, "start", "stop"),
        "audit": (daemon.actions.audit, "open", "close"),
        "http": (daemon.http, "start", "stop"),
        "side_writer": (daemon.side_writer, "start", "stop"),
        "consumer": (daemon.consumer, "start", "stop"),
        "store": (daemon.store, "start", "stop"),
        "actions": (daemon.actions, "start", "stop"),
    }


def _recording(name: str, method: Callable[..., Any], calls: list[str]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(method):

        async def async_recorded(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return await method(*args, **kwargs)

        return async_recorded

    def recorded(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return method(*args, **kwargs)

    return recorded


def _daemon(tmp_path: Path, bootstrap_servers: str, topic: str) -> Daemon:
    config = {
        "kafka": kafka_section(bootstrap_servers, topic),
        "http": {"host": "127.0.0.1", "port": 0},
        "flags": {"type": "flagd_file", "path": str(tmp_path / "flags.json")},
        "actions": {"audit_log": str(tmp_path / "audit.jsonl")},
        "state": {"backend": "kafka", "topic": f"{topic}-state"},
        "lifecycle": {"grace_period_s": 10},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    daemon = Daemon(load_settings(path), metrics=Metrics.create(CollectorRegistry()))
    # A failed Kafka start is retried until this deadline, then reported: keep it short.
    daemon.broker_retry = Backoff(first_s=0.05, max_s=0.1, jitter=0.0)
    daemon.broker_start_timeout_s = 0.3
    return daemon


@pytest.mark.parametrize("failing", START_ORDER)
async def test_failed_start_stops_the_started_components_in_reverse_order(
    failing: str,
    broker: EmbeddedBroker,
    unique: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    await create_topic(broker.bootstrap_servers, unique, 1)
    daemon = _daemon(tmp_path, broker.bootstrap_servers, unique)
    started: list[str] = []
    stopped: list[str] = []
    for name, (component, start, stop) in _components(daemon).items():
        original_start = getattr(component, start)
        if name == failing:
            if inspect.iscoroutinefunction(original_start):

                async def fail_async(*_: Any) -> None:
                    raise InjectedStartError(f"{failing} cannot start")

                setattr(component, start, fail_async)
            else:

                def fail(*_: Any) -> None:
                    raise InjectedStartError(f"{failing} cannot start")

                setattr(component, start, fail)
        else:
            setattr(component, start, _recording(name, original_start, started))
        setattr(component, stop, _recording(name, getattr(component, stop), stopped))

    before = list(START_ORDER[: START_ORDER.index(failing)])
    if failing in EXIT_1:
        assert await asyncio.wait_for(daemon.run(), 60) == 1
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(f"{failing} cannot start" in message for message in errors), errors
    else:
        with pytest.raises(InjectedStartError, match=f"{failing} cannot start"):
            await asyncio.wait_for(daemon.run(), 60)

    # A Kafka client is started again on each retry; each started component once in order.
    assert list(dict.fromkeys(started)) == before
    # A failed Kafka start cleans up after itself: consumer.stop() ends the outage log that
    # holds back aiokafka's errors (it has no client to stop). Apart from that, only what
    # had started is stopped, each once, the last started first.
    own_cleanup = {"consumer"} if failing in {"side_writer", "consumer"} else set()
    assert [name for name in stopped if name not in own_cleanup] == list(reversed(before))
    # Nothing keeps running: no heartbeat task, no HTTP runner, no Kafka client.
    assert daemon.heartbeat._task is None
    assert daemon.http._runner is None
    assert daemon.consumer._consumer is None
    assert daemon.side_writer._producer is None
    assert getattr(daemon.store, "_producer", None) is None
