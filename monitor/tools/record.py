"""Recording a topic (or a time range of it) to JSON lines for ``driftwarden replay``: reads
without a consumer group, from assigned partitions, and stops at the end seen at start.

Each event line carries the broker's record timestamp as one added member, ``_record_ts``
(epoch seconds), last in the object: the replay's clock for an event without ``ts``, which the
daemon times by its receive time (docs/replay.md, "Event time").
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from monitor.errors import BrokerUnavailableError, DriftwardenError
from monitor.kafka.quirks import refresh_metadata

__all__ = ["RECORD_TS_FIELD", "RecordStats", "TopicRecorder", "stamp_record_time"]

log = logging.getLogger(__name__)

#: The member ``record`` adds to each event object: the broker's record timestamp, epoch
#: seconds. Written last, so it wins over a producer's own member of that name.
RECORD_TS_FIELD = "_record_ts"
_FIELD_PREFIX = b',"' + RECORD_TS_FIELD.encode() + b'":'


@dataclass(slots=True)
class RecordStats:
    """What a recording wrote and skipped."""

    written: int = 0
    #: Values that are not JSON (or empty): counted, not written.
    skipped: int = 0
    #: Records older than ``from_ms`` read past (not written).
    before_from: int = 0
    partitions: int = 0
    #: partition -> next offset after the last record read.
    positions: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


class TopicRecorder:
    """Dumps one topic's record values to a JSON-lines file (gzip when it ends in ``.gz``).

    Partitions are assigned, not subscribed: no consumer group is joined and nothing is
    committed, so recording never disturbs the daemon's group. A partition is finished when
    its position has passed the end offset observed at start and it has delivered nothing for
    ``idle_s`` (Tansu's ListOffsets answer is not the log end, see monitor.kafka.quirks, so
    the end seen at start is only a lower bound), or when it delivers a record
    written after the recording started, or one past ``to_ms``.

    Parameters
    ----------
    client_options
        aiokafka connection and security options (``KafkaSettings.client_options()``).
    topic
        The topic to record.
    from_ms, to_ms
        Record-timestamp range (epoch milliseconds, inclusive); the whole topic when None.
    max_records
        Stop after writing this many values.
    idle_s
        Quiet time after which a partition past its start-time end is considered finished.
    timeout_s
        Deadline of each broker call.
    """

    def __init__(
        self,
        client_options: dict[str, Any],
        topic: str,
        *,
        from_ms: int | None = None,
        to_ms: int | None = None,
        max_records: int | None = None,
        idle_s: float = 2.0,
        timeout_s: float = 10.0,
    ) -> None:
        if max_records is not None and max_records < 1:
            raise ValueError(f"max_records must be at least 1, got {max_records}")
        if from_ms is not None and to_ms is not None and to_ms < from_ms:
            raise ValueError(f"to ({to_ms}) is before from ({from_ms})")
        self.client_options = client_options
        self.topic = topic
        self.from_ms = from_ms
        self.to_ms = to_ms
        self.max_records = max_records
        self.idle_s = idle_s
        self.timeout_s = timeout_s
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=int(self.timeout_s * 1000),
            **self.client_options,
        )
        try:
            await asyncio.wait_for(consumer.start(), self.timeout_s)
        except (TimeoutError, OSError) as err:
            await consumer.stop()
            servers = self.client_options.get("bootstrap_servers")
            raise BrokerUnavailableError(
                f"broker {servers!r} did not answer within {self.timeout_s}s: {err!r}"
            ) from err
        except Exception:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def __aenter__(self) -> TopicRecorder:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            await refresh_metadata(consumer, self.timeout_s)
            partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise DriftwardenError(f"topic {self.topic!r} does not exist or has no partitions")
        return [TopicPartition(self.topic, p) for p in sorted(partitions)]

    async def run(
        self, out: str | Path, *, progress: Callable[[int], None] | None = None
    ) -> RecordStats:
        """Record into ``out`` (written to ``out.partial``, renamed when complete)."""
        await self.start()
        consumer = self._consumer
        assert consumer is not None
        started = time.perf_counter()
        started_ms = int(time.time() * 1000)
        tps = await self._partitions(consumer)
        consumer.assign(tps)
        ends: dict[TopicPartition, int] = await asyncio.wait_for(
            consumer.end_offsets(tps), self.timeout_s
        )
        active = set(tps)
        if self.from_ms is not None:
            found = await asyncio.wait_for(
                consumer.offsets_for_times(dict.fromkeys(tps, self.from_ms)), self.timeout_s
            )
            for tp in tps:
                hit = found.get(tp)
                if hit is None:
                    active.discard(tp)
                else:
                    consumer.seek(tp, hit.offset)
        else:
            await consumer.seek_to_beginning(*tps)
        stats = RecordStats(partitions=len(tps))
        target = Path(out)
        partial = target.with_name(target.name + ".partial")
        validate = msgspec.json.Decoder().decode
        encode = msgspec.json.encode
        last_data = dict.fromkeys(tps, time.monotonic())
        with _open_out(partial) as sink:
            while active:
                batch = await asyncio.wait_for(
                    consumer.getmany(*active, timeout_ms=200, max_records=5000),
                    self.timeout_s,
                )
                now = time.monotonic()
                for tp, records in batch.items():
                    if tp not in active:
                        continue
                    last_data[tp] = now
                    for record in records:
                        if self._past_end(record, ends[tp], started_ms):
                            active.discard(tp)
                            break
                        stats.positions[tp.partition] = record.offset + 1
                        if self.from_ms is not None and record.timestamp < self.from_ms:
                            # offsets_for_times only gives a starting point (and some brokers,
                            # Tansu among them, answer the first offset): filter here too.
                            stats.before_from += 1
                            continue
                        value = record.value
                        try:
                            parsed = validate(value) if value else None
                        except msgspec.DecodeError:
                            parsed = None
                        if parsed is None:
                            stats.skipped += 1
                            continue
                        if b"\n" in value or b"\r" in value:
                            value = encode(parsed)
                        # A value that is not an object is written as it is: the replay
                        # counts it as the bad line the daemon dead-letters. A timestamp of
                        # -1 means the broker has none for the record.
                        if isinstance(parsed, dict) and record.timestamp >= 0:
                            value = stamp_record_time(value, bool(parsed), record.timestamp)
                        sink.write(value)
                        sink.write(b"\n")
                        stats.written += 1
                        if self.max_records is not None and stats.written >= self.max_records:
                            active.clear()
                            break
                if progress is not None:
                    progress(stats.written)
                for tp in list(active):
                    position = await consumer.position(tp)
                    if position >= ends[tp] and now - last_data[tp] >= self.idle_s:
                        active.discard(tp)
        partial.replace(target)
        stats.elapsed_s = time.perf_counter() - started
        log.info(
            "recorded %d values (%d skipped) of %s to %s",
            stats.written,
            stats.skipped,
            self.topic,
            target,
        )
        return stats

    def _past_end(self, record: Any, end: int, started_ms: int) -> bool:
        if self.to_ms is not None and record.timestamp > self.to_ms:
            return True
        # Appended after the recording started: a live topic would otherwise never end.
        return bool(record.offset >= end and record.timestamp > started_ms)


def stamp_record_time(value: bytes, has_members: bool, timestamp_ms: int) -> bytes:
    """``value`` (one JSON object on one line, already validated; ``has_members`` when it is
    not ``{}``) with ``_record_ts`` added as its last member.

    The producer's bytes are kept as they are (no re-encoding of its numbers or strings).

    >>> stamp_record_time(b'{"model": "m"} ', True, 1700000000123)
    b'{"model": "m","_record_ts":1700000000.123}'
    >>> stamp_record_time(b"{}", False, 5)
    b'{"_record_ts":0.005}'
    """
    stamp = f"{timestamp_ms // 1000}.{timestamp_ms % 1000:03d}".encode()
    body = value.rstrip()
    if not has_members:
        return b"{" + _FIELD_PREFIX[1:] + stamp + b"}"
    return body[:-1] + _FIELD_PREFIX + stamp + b"}"


def _open_out(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz.partial") or path.suffix == ".gz":
        return gzip.open(path, "wb", compresslevel=6)  # type: ignore[return-value]
    return path.open("wb")
