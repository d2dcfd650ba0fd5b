"""Broker outages on a real, dedicated Tansu broker: readiness, metrics, bounded memory and
recovery after a restart that loses every topic, offset and group (Tansu is memory only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.engine.events import BadRecord
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import require_tansu, wait_for
from tests.core.kafka_helpers import create_topic, event, produce, read_all
from tests.core.test_pipeline import POLICY

pytestmark = pytest.mark.integration

TOPIC = "events"
#: Gross bounds: generous against a loaded CI machine, tight against a real regression.
DETECT_WITHIN_S = 15.0
RESUME_WITHIN_S = 60.0
OUTAGE_S = 8.0
RSS_GROWTH_LIMIT_KB = 50 * 1024


def rss_kb() -> int:
    """Resident set size of this process (the daemon runs in it), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test alone, on a fixed port it can be restarted on."""
    require_tansu()
    broker = EmbeddedBroker(free_port(), log_path=tmp_path / "tansu.log")
    broker.start_sync()
    yield broker
    # SIGKILL: SIGTERM takes Tansu about 5 s and there is nothing to flush.
    broker.kill_sync()


@dataclass
class Running:
    daemon: Daemon
    task: asyncio.Task[int]
    http: aiohttp.ClientSession
    base: str
    applied_log: Path

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(self.base + path) as response:
            return response.status, await response.text()

    async def readyz(self) -> tuple[int, list[str]]:
        status, body = await self.get("/readyz")
        return status, json.loads(body)["problems"]

    async def metric(self, name: str) -> float | None:
        """A sample read from the daemon's own /metrics page, as Prometheus would."""
        _, body = await self.get("/metrics")
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def applied_ids(self) -> set[str]:
        if not self.applied_log.exists():
            return set()
        return set(self.applied_log.read_text().split())

    def loop_alive(self) -> bool:
        loop_task = self.daemon._loop_task
        return not self.task.done() and loop_task is not None and not loop_task.done()


@pytest.fixture
async def running(own_broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[Running]:
    """The daemon in this process, with its HTTP server, consuming ``TOPIC`` from the start."""
    await create_topic(own_broker.bootstrap_servers, TOPIC)
    applied_log = tmp_path / "applied.txt"
    http_port = free_port()
    config = {
        "kafka": {
            "bootstrap_servers": own_broker.bootstrap_servers,
            "topics": [TOPIC],
            "group_id": "outage",
            "dead_letter_topic": f"{TOPIC}-dlq",
            "review_topic": f"{TOPIC}-review",
            "auto_offset_reset": "earliest",
            "broker_timeout_s": 3,
        },
        "http": {"host": "127.0.0.1", "port": http_port},
        "lifecycle": {"log_format": "text", "grace_period_s": 10},
        "engine": {"applied_log": str(applied_log)},
        **POLICY,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    daemon = Daemon(load_settings(path), metrics=Metrics.create(CollectorRegistry()))
    task = asyncio.create_task(daemon.run())
    async with aiohttp.ClientSession() as http:
        run = Running(daemon, task, http, f"http://127.0.0.1:{http_port}", applied_log)
        try:
            yield run
        finally:
            daemon.request_stop("test over")
            code = await asyncio.wait_for(task, 30)
        assert code == 0


async def recreate_topic(bootstrap: str, topic: str) -> None:
    """Create the topic on the restarted broker, unless the daemon's metadata requests
    auto-created it first."""
    with contextlib.suppress(TopicAlreadyExistsError):
        await create_topic(bootstrap, topic)


async def broker_down_seen(run: Running) -> bool:
    status, problems = await run.readyz()
    return (
        status == 503
        and any("Kafka broker unreachable" in p for p in problems)
        and await run.metric("driftwarden_broker_up") == 0
    )


async def fully_ready(run: Running) -> bool:
    status, _ = await run.readyz()
    return status == 200 and await run.metric("driftwarden_broker_up") == 1


async def test_broker_killed_and_restarted_empty_readiness_fails_then_consumption_resumes(
    own_broker: EmbeddedBroker, running: Running
) -> None:
    """Kill -9 the broker under a consuming daemon, keep it down, restart it with no data.

    While it is down: /readyz 503 naming the broker, broker_up 0 on /metrics, /healthz 200,
    the batch loop alive, RSS flat. After the restart (topic recreated by hand, offsets and
    group gone; 100 new records, so the daemon's old position 200 is past the new log end)
    the daemon applies the new events without being touched.
    """
    run = running
    bootstrap = own_broker.bootstrap_servers
    await produce(bootstrap, TOPIC, (event("m", i) for i in range(200)))
    await wait_for(lambda: len(run.applied_ids()) >= 200, timeout=60, what="first events")
    await wait_for(lambda: fully_ready(run), timeout=30, what="ready before the outage")
    rss_before = rss_kb()

    killed_at = time.monotonic()
    own_broker.kill_sync()
    detected_s = await wait_for(
        lambda: broker_down_seen(run), timeout=DETECT_WITHIN_S, what="/readyz and broker_up 0"
    )

    rss_samples = []
    while time.monotonic() - killed_at < OUTAGE_S:
        assert (await run.get("/healthz"))[0] == 200, "the daemon must stay alive"
        assert await broker_down_seen(run), "readiness came back while the broker was down"
        assert run.loop_alive(), "the batch loop stopped during the outage"
        rss_samples.append(rss_kb())
        await asyncio.sleep(0.25)  # a sampling period, not a wait for a condition
    growth_kb = max(rss_samples) - rss_before

    own_broker.start_sync()
    restarted_at = time.monotonic()
    await recreate_topic(bootstrap, TOPIC)
    await produce(bootstrap, TOPIC, (event("m", i) for i in range(1000, 1100)))
    after = {f"m-{i}" for i in range(1000, 1100)}
    await wait_for(
        lambda: after <= run.applied_ids(), timeout=RESUME_WITHIN_S, what="events after restart"
    )
    resumed_s = time.monotonic() - restarted_at
    await wait_for(lambda: fully_ready(run), timeout=30, what="ready after the restart")
    ready_s = time.monotonic() - restarted_at

    print(
        f"\noutage detected after {detected_s:.2f}s; RSS {rss_before / 1024:.1f} MB, "
        f"max growth {growth_kb / 1024:+.1f} MB over {len(rss_samples)} samples in "
        f"{OUTAGE_S:.0f}s down; consumption resumed {resumed_s:.2f}s and /readyz 200 "
        f"{ready_s:.2f}s after the broker came back"
    )
    assert growth_kb < RSS_GROWTH_LIMIT_KB
    assert run.loop_alive()
    assert {f"m-{i}" for i in range(200)} <= run.applied_ids()


async def test_bad_record_whose_dead_letter_write_hits_the_outage_reaches_the_dead_letter_topic(
    own_broker: EmbeddedBroker, running: Running
) -> None:
    """The broker dies exactly when a bad record is about to be dead-lettered.

    Provable with a memory-only broker: the record's bytes live on in the daemon, which
    keeps retrying the write without committing past it (committed offset stays at or
    below the bad record's, /readyz 503, no crash); once the broker is back the record is
    in the dead-letter topic of the new broker with its reason, and consumption resumes.
    The source topic itself is lost with the broker, so what replay after a daemon crash
    would do cannot be shown here (test_pipeline's kill -9 test covers replay).
    """
    run = running
    bootstrap = own_broker.bootstrap_servers
    await produce(bootstrap, TOPIC, (event("m", i) for i in range(50)))
    await wait_for(lambda: len(run.applied_ids()) >= 50, timeout=60, what="first events")
    await wait_for(lambda: fully_ready(run), timeout=30, what="ready before the outage")
    get = run.daemon.metrics.registry.get_sample_value
    committed_labels = {"topic": TOPIC, "partition": "0"}
    await wait_for(lambda: get("driftwarden_committed_offset", committed_labels) == 50)

    writer = run.daemon.side_writer
    real_dead_letter = writer.dead_letter
    kills: list[float] = []

    async def dead_letter_on_a_dying_broker(
        record: ConsumerRecord[bytes, bytes], bad: BadRecord
    ) -> None:
        if not kills:
            own_broker.kill_sync()
            kills.append(time.monotonic())
        await real_dead_letter(record, bad)

    writer.dead_letter = dead_letter_on_a_dying_broker  # type: ignore[method-assign]
    bad_value = b"not json, sent while the broker dies"
    await produce(bootstrap, TOPIC, [(b"m", bad_value), *(event("m", i) for i in range(50, 60))])
    await wait_for(lambda: bool(kills), timeout=30, what="the dead-letter write")
    detected_s = await wait_for(
        lambda: broker_down_seen(run), timeout=DETECT_WITHIN_S, what="/readyz 503"
    )
    while time.monotonic() - kills[0] < 5.0:
        assert (await run.get("/healthz"))[0] == 200
        assert run.loop_alive()
        assert (get("driftwarden_committed_offset", committed_labels) or 0) <= 50
        await asyncio.sleep(0.25)  # a sampling period, not a wait for a condition
    assert get("driftwarden_dead_lettered_total") == 0

    own_broker.start_sync()
    restarted_at = time.monotonic()
    # Counted once the new broker acknowledged it. Reading before that would race the
    # daemon's producer in auto-creating the topic, and Tansu may then drop the record.
    await wait_for(
        lambda: get("driftwarden_dead_lettered_total") == 1,
        timeout=RESUME_WITHIN_S,
        what="the dead letter acknowledged by the restarted broker",
    )
    dead_lettered_s = time.monotonic() - restarted_at
    dead = await read_all(bootstrap, f"{TOPIC}-dlq", 1)
    # At least once: a write the producer had buffered may land besides the retried one.
    assert {r.value for r in dead} == {bad_value}
    for record in dead:
        headers = dict(record.headers)
        assert headers["driftwarden.reason"] == b"not_json"
        assert headers["driftwarden.source.offset"] == b"50"

    await recreate_topic(bootstrap, TOPIC)
    await produce(bootstrap, TOPIC, (event("m", i) for i in range(2000, 2050)))
    after = {f"m-{i}" for i in range(2000, 2050)}
    await wait_for(
        lambda: after <= run.applied_ids(), timeout=RESUME_WITHIN_S, what="events after restart"
    )
    resumed_s = time.monotonic() - restarted_at
    await wait_for(lambda: fully_ready(run), timeout=30, what="ready after the restart")
    print(
        f"\ndead-letter outage detected after {detected_s:.2f}s; the record reached the "
        f"new dead-letter topic {dead_lettered_s:.2f}s and consumption resumed "
        f"{resumed_s:.2f}s after the broker came back"
    )
    assert get("driftwarden_dead_lettered_total") == 1
    assert {f"m-{i}" for i in range(60)} <= run.applied_ids()


async def test_graceful_stop_while_the_broker_is_down_exits_zero_within_the_grace_period(
    own_broker: EmbeddedBroker, running: Running
) -> None:
    """SIGTERM's path (request_stop) with the broker dead: the final commit and the client
    stops fail under their deadlines, and run() still returns 0 within the grace period
    (aiokafka's consumer.stop() can raise CancelledError here; EventConsumer absorbs it)."""
    run = running
    await produce(own_broker.bootstrap_servers, TOPIC, (event("m", i) for i in range(50)))
    await wait_for(lambda: len(run.applied_ids()) >= 50, timeout=60, what="first events")
    own_broker.kill_sync()
    await wait_for(lambda: broker_down_seen(run), timeout=DETECT_WITHIN_S, what="/readyz 503")
    asked = time.monotonic()
    run.daemon.request_stop("SIGTERM")
    code = await asyncio.wait_for(asyncio.shield(run.task), 30)
    took = time.monotonic() - asked
    print(f"\nstop with the broker down took {took:.2f}s")
    assert code == 0
    assert took < run.daemon.settings.lifecycle.grace_period_s
