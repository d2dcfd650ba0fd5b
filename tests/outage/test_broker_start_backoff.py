"""Start-up against a broker that cannot be reached: capped exponential backoff, one log line
per attempt naming the next delay, a prompt stop while waiting, an exit 1 past the deadline.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.kafka.backoff import Backoff
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import free_port
from tests.conftest import wait_for

RETRY = re.compile(r"attempt (\d+): .*\); retrying in (\d+\.\d)s$")


def _daemon(tmp_path: Path) -> Daemon:
    # A port nothing listens on: every connection is refused at once.
    config = {
        "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}", "broker_timeout_s": 2},
        "http": {"host": "127.0.0.1", "port": 0},
        "flags": {"type": "flagd_file", "path": str(tmp_path / "flags.json")},
        "actions": {"audit_log": str(tmp_path / "audit.jsonl")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return Daemon(load_settings(path), metrics=Metrics.create(CollectorRegistry()))


def _retries(caplog: pytest.LogCaptureFixture) -> list[tuple[int, float]]:
    found = []
    for record in caplog.records:
        if record.name == "monitor.daemon.daemon" and (match := RETRY.search(record.getMessage())):
            found.append((int(match.group(1)), float(match.group(2))))
    return found


def test_backoff_doubles_to_its_cap_within_its_jitter() -> None:
    for draw in (0.0, 0.5, 0.999):
        delays = Backoff(first_s=1.0, max_s=30.0, jitter=0.2, random=lambda d=draw: d).delays()
        got = [next(delays) for _ in range(8)]
        factor = 1.0 + 0.2 * (2 * draw - 1)
        assert got == pytest.approx([min(30.0, b * factor) for b in (1, 2, 4, 8, 16, 30, 30, 30)])
        assert max(got) <= 30.0


@pytest.mark.parametrize(
    ("first_s", "max_s", "jitter"), [(0.0, 1.0, 0.1), (2.0, 1.0, 0.1), (1.0, 2.0, 1.0)]
)
def test_backoff_rejects_bad_parameters(first_s: float, max_s: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(first_s=first_s, max_s=max_s, jitter=jitter)


async def test_unreachable_broker_is_retried_with_backoff_and_one_line_per_attempt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    daemon = _daemon(tmp_path)
    daemon.broker_retry = Backoff(first_s=0.1, max_s=0.4, jitter=0.0)
    daemon.broker_start_timeout_s = 2.5
    started = time.monotonic()
    assert await asyncio.wait_for(daemon.run(), 60) == 1
    elapsed = time.monotonic() - started

    retries = _retries(caplog)
    attempts = [attempt for attempt, _ in retries]
    delays = [delay for _, delay in retries]
    # 0.1 + 0.2 + 5 x 0.4 s of waits fit in 2.5 s; attempts on a loaded machine
    # take time of their own, so fewer may fit, never more.
    assert 3 <= len(retries) <= 7, retries
    assert attempts == list(range(1, len(retries) + 1))
    assert delays == [0.1, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4][: len(retries)]
    assert elapsed >= sum(delays)
    # aiokafka's own error per refused connection is folded into our line, not repeated
    assert not [r for r in caplog.records if r.getMessage().startswith("Unable connect to")]
    assert all(
        f'Unable connect to "{daemon.settings.kafka.bootstrap_servers}"' in r.getMessage()
        for r in caplog.records
        if "attempt" in r.getMessage()
    )
    final = [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and r.name == "monitor.daemon.daemon"
    ]
    assert len(final) == 1
    assert f"giving up after {len(retries) + 1} attempts" in final[0].getMessage()


async def test_stop_while_waiting_for_the_broker_exits_without_waiting_out_the_delay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    daemon = _daemon(tmp_path)
    daemon.broker_retry = Backoff(first_s=60.0, max_s=60.0, jitter=0.0)
    task = asyncio.create_task(daemon.run())
    await wait_for(lambda: bool(_retries(caplog)), timeout=60, what="the first retry line")
    stopped = time.monotonic()
    daemon.request_stop("test")
    assert await asyncio.wait_for(task, 30) == 1
    assert time.monotonic() - stopped < 10  # gross bound: far below the 60 s delay
    assert _retries(caplog) == [(1, 60.0)]
    assert any("stopped after 1 attempts" in r.getMessage() for r in caplog.records)
