"""A broker lost after start: aiokafka's per-retry errors (dozens a second) are held back
while the outage lasts; the daemon reports the outage on a backoff schedule with their count,
and says how many it held back once the broker is back."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import kafka_section, require_tansu, wait_for
from tests.core.kafka_helpers import create_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STILL_DOWN = re.compile(r"still unreachable after \d+s \((\d+) client errors held back")


async def test_client_errors_are_held_back_during_an_outage_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_tansu()
    caplog.set_level(logging.INFO)
    broker = EmbeddedBroker(free_port(), log_path=tmp_path / "tansu.log")
    broker.start_sync()
    try:
        topic = "outage-logging"
        await create_topic(broker.bootstrap_servers, topic)
        config = {
            "kafka": {**kafka_section(broker.bootstrap_servers, topic), "broker_timeout_s": 2},
            "http": {"host": "127.0.0.1", "port": 0},
            "flags": {"type": "flagd_file", "path": str(tmp_path / "flags.json")},
            "actions": {"audit_log": str(tmp_path / "audit.jsonl")},
        }
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        daemon = Daemon(
            load_settings(tmp_path / "config.yaml"), metrics=Metrics.create(CollectorRegistry())
        )
        task = asyncio.create_task(daemon.run())
        consumer = daemon.consumer
        await wait_for(lambda: bool(consumer.assignment), timeout=60, what="partitions assigned")

        await asyncio.to_thread(broker.kill_sync)
        await wait_for(lambda: consumer.outages == 1, timeout=60, what="the outage noticed")
        noticed = len(caplog.records)
        await wait_for(
            lambda: any(STILL_DOWN.search(r.getMessage()) for r in caplog.records),
            timeout=60,
            what="a 'still unreachable' report",
        )
        after = caplog.records[noticed:]
        reports = [m for r in after if (m := STILL_DOWN.search(r.getMessage()))]
        assert int(reports[0].group(1)) > 0  # aiokafka did retry, and was held back
        assert [r for r in after if r.name.startswith("aiokafka")] == []

        broker.start_sync()
        await wait_for(lambda: consumer.broker_reachable, timeout=90, what="broker back")
        back = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
        assert back and "client errors held back" in back[-1]
        daemon.request_stop("test over")
        await asyncio.wait_for(task, 60)
    finally:
        broker.kill_sync()
