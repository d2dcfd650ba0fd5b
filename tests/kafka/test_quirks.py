"""monitor.kafka.quirks: each workaround acts on the behaviour it names and lets a
well-behaved broker's (or library's) answers through unchanged.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from monitor.config.settings import KafkaSettings
from monitor.kafka import quirks
from monitor.kafka.consumer import EventConsumer
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker
from tests.conftest import wait_for
from tests.core.kafka_helpers import committed_offsets, create_topic, event, produce

A = TopicPartition("events", 0)
B = TopicPartition("events", 1)


# ----------------------------------------------------------- positions past the log end


def test_positions_within_the_log_pass_through() -> None:
    # Kafka: a position is at most the high watermark (past it, the broker answers
    # OFFSET_OUT_OF_RANGE and aiokafka resets); an unfetched partition has none.
    assert quirks.positions_past_log_end({A: 0, B: 15}, {A: 0, B: 15}) == {}
    assert quirks.positions_past_log_end({A: 7, B: 3}, {A: 15, B: None}) == {}


def test_a_position_past_a_lost_log_is_found_with_the_new_end() -> None:
    assert quirks.positions_past_log_end({A: 200, B: 50}, {A: 100, B: 60}) == {A: 100}
    assert quirks.positions_past_log_end({A: 1}, {A: 0}) == {A: 0}


# ------------------------------------------------------- offsets across a broker restart


def test_offsets_the_broker_kept_are_not_lost() -> None:
    assert quirks.lost_committed_offsets({A: 200, B: 10}, {A: 200, B: 10}) == set()
    # Another replica committed further while it owned the partition.
    assert quirks.lost_committed_offsets({A: 200}, {A: 260}) == set()
    assert quirks.lost_committed_offsets({}, {}) == set()


def test_offsets_a_restarted_broker_lost_are_named() -> None:
    assert quirks.lost_committed_offsets({A: 200, B: 10}, {A: None, B: None}) == {A, B}
    assert quirks.lost_committed_offsets({A: 200, B: 10}, {A: 3, B: 10}) == {A}
    assert quirks.lost_committed_offsets({A: 200}, {}) == {A}


# --------------------------------------------------------------------- the log end


@pytest.mark.parametrize(("listed", "highwater"), [(15, 15), (15, None), (0, None), (0, 0)])
def test_a_listed_end_that_is_the_log_end_passes_through(
    listed: int, highwater: int | None
) -> None:
    assert quirks.read_end(listed, highwater) == listed


def test_the_fetched_high_watermark_wins_over_a_wrong_listed_end() -> None:
    # Tansu, three batches of five records: ListOffsets 11, Fetch's high watermark 15.
    assert quirks.read_end(11, 15) == 15


# ------------------------------------------------------------------ aiokafka's logs


def record(logger: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(logger, level, __file__, 1, msg, (), None)


def test_client_errors_pass_unless_held_back_during_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    held = quirks.ClientErrorsHeldBack()
    conn = logging.getLogger("aiokafka.conn")
    conn.error("Unable connect to node 1 (before)")
    held.attach()
    try:
        conn.error("Unable connect to node 1 (during)")
        conn.warning("Got error produce response (during)")
        conn.info("metadata refreshed (during)")
    finally:
        held.detach()
    conn.error("Unable connect to node 1 (after)")
    shown = [r.getMessage() for r in caplog.records if r.name == "aiokafka.conn"]
    assert shown == [
        "Unable connect to node 1 (before)",
        "metadata refreshed (during)",
        "Unable connect to node 1 (after)",
    ]
    assert (held.held, held.last) == (2, "Got error produce response (during)")


def test_only_connect_errors_are_muted_at_start() -> None:
    muted = quirks.ConnectErrorsMuted()
    assert muted.filter(record("aiokafka", logging.ERROR, "Topic events not found"))
    assert muted.filter(record("aiokafka", logging.WARNING, "Heartbeat failed"))
    assert muted.take() is None
    assert not muted.filter(record("aiokafka", logging.ERROR, "Unable connect to node 1: refused"))
    assert muted.take() == "Unable connect to node 1: refused"
    assert muted.take() is None


# ------------------------------------------------------------------ aiokafka's API


def test_aiokafka_private_calls_are_there() -> None:
    """refresh_metadata and close_after_interrupted_stop use the client's private API."""
    assert callable(AIOKafkaClient.force_metadata_update)
    assert callable(AIOKafkaClient.close)


async def test_being_cancelled_tells_our_cancellation_from_aiokafka_raising_one() -> None:
    seen: list[bool] = []

    async def raises_on_its_own() -> None:
        try:
            raise asyncio.CancelledError  # what aiokafka's Fetcher.close() does
        except asyncio.CancelledError:
            seen.append(quirks.being_cancelled())

    async def cancelled() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append(quirks.being_cancelled())
            raise

    await raises_on_its_own()
    task = asyncio.create_task(cancelled())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [False, True]


# ------------------------------------- the consumer on a broker that keeps its offsets


@pytest.mark.integration
async def test_offsets_pending_across_an_outage_are_committed_when_the_broker_kept_its_own(
    broker: EmbeddedBroker, unique: str
) -> None:
    """The broker comes back with the group's offsets: nothing is dropped (before the
    quirk was conditional, every pending offset was dropped at the outage's start)."""
    bootstrap = broker.bootstrap_servers
    await create_topic(bootstrap, unique)
    await produce(bootstrap, unique, (event("m", i) for i in range(30)))
    settings = KafkaSettings(
        bootstrap_servers=bootstrap,
        topics=[unique],
        group_id=unique,
        auto_offset_reset="earliest",
        broker_timeout_s=5,
    )
    consumer = EventConsumer(settings, Metrics.create(CollectorRegistry()))
    await consumer.start()
    try:
        applied: list[int] = []

        async def fetched_all() -> bool:
            batch = await consumer.fetch()
            for records in batch.values():
                applied.extend(r.offset for r in records)
            if batch:
                consumer.mark_applied({tp: records[:1] for tp, records in batch.items()})
                assert await consumer.commit()
                consumer.mark_applied(batch)
            return len(applied) >= 30

        await wait_for(fetched_all, timeout=60, what="30 records fetched")
        tp = TopicPartition(unique, 0)
        assert consumer._committed.get(tp) is not None
        consumer.mark_broker(False)  # an outage the broker survives with its data
        consumer.mark_broker(True)
        assert await consumer.commit()
        assert await committed_offsets(bootstrap, unique, unique) == {0: 30}
    finally:
        await consumer.stop()
