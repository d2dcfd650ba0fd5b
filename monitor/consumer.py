"""The Kafka side: the consumer (getmany batches, manual commits, rebalance listener, a
deadline on every broker wait) and the producer for the dead-letter and review topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

from monitor.errors import BrokerUnavailableError
from monitor.events import BadRecord
from monitor.metrics import Metrics
from monitor.settings import KafkaSettings

__all__ = ["DeadLetterWriter", "EventConsumer", "ensure_topics"]

log = logging.getLogger(__name__)

PartitionHook = Callable[[set[TopicPartition]], Awaitable[None]]
Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


async def ensure_topics(
    settings: KafkaSettings, topics: dict[str, dict[str, Any]], timeout_s: float
) -> None:
    """Create missing topics: ``{name: {"partitions": N, "config": {...}}}``."""
    admin = AIOKafkaAdminClient(**settings.client_options())
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        existing = set(await asyncio.wait_for(admin.list_topics(), timeout_s))
        missing = [
            NewTopic(
                name,
                num_partitions=spec.get("partitions", 1),
                replication_factor=spec.get("replication_factor", 1),
                topic_configs=spec.get("config", {}),
            )
            for name, spec in topics.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await asyncio.wait_for(admin.create_topics(missing), timeout_s)
            log.info("created topics %s", [t.name for t in missing])
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.close(), timeout_s)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: EventConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner._on_assigned(set(assigned))


class EventConsumer:
    """Fetches batches and commits offsets only when told a batch is fully applied.

    The batch lock is held by the daemon while it applies a batch; the rebalance listener
    takes it too, so a revoke waits for the batch in flight, then commits it.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        metrics: Metrics,
        *,
        on_assigned: PartitionHook | None = None,
        on_revoked: PartitionHook | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.batch_lock = asyncio.Lock()
        self._on_assigned_hook = on_assigned
        self._on_revoked_hook = on_revoked
        self._consumer: AIOKafkaConsumer | None = None
        #: Next offset to commit per partition (last applied offset + 1), not yet committed.
        self._pending: dict[TopicPartition, int] = {}
        self._next: dict[TopicPartition, int] = {}
        self.assignment: set[TopicPartition] = set()
        self.assignment_received = False
        self.broker_ok_at: float | None = None
        self.broker_failed_at: float | None = None

    @property
    def broker_reachable(self) -> bool:
        if self.broker_ok_at is None:
            return False
        return self.broker_failed_at is None or self.broker_ok_at > self.broker_failed_at

    async def start(self) -> None:
        if self._consumer is not None:
            return
        s = self.settings
        consumer = AIOKafkaConsumer(
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset=s.auto_offset_reset,
            max_poll_records=s.max_poll_records,
            fetch_max_wait_ms=min(s.fetch_timeout_ms, 500),
            max_partition_fetch_bytes=max(s.max_record_bytes * 2, 1_048_576),
            fetch_max_bytes=max(s.max_record_bytes * 4, 52_428_800),
            **s.client_options(),
        )
        try:
            await asyncio.wait_for(consumer.start(), s.broker_timeout_s)
        except (TimeoutError, KafkaError, OSError) as err:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), s.broker_timeout_s)
            self._mark_broker(False)
            raise BrokerUnavailableError(
                f"cannot reach Kafka at {s.bootstrap_servers!r} within {s.broker_timeout_s}s: "
                f"{err!r}"
            ) from err
        listener = _Listener(self)
        if s.topic_pattern is not None:
            consumer.subscribe(pattern=s.topic_pattern, listener=listener)
        else:
            consumer.subscribe(topics=list(s.topics), listener=listener)
        self._consumer = consumer
        self._mark_broker(True)

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            await asyncio.wait_for(consumer.stop(), self.settings.broker_timeout_s)
        except (TimeoutError, KafkaError, OSError) as err:
            log.warning("consumer did not stop cleanly: %r", err)

    def _mark_broker(self, ok: bool) -> None:
        now = time.monotonic()
        if ok:
            self.broker_ok_at = now
        else:
            self.broker_failed_at = now
        self.metrics.broker_up.set(1 if ok else 0)

    async def fetch(self) -> Batch:
        """One getmany() under a deadline; an empty batch when the broker is slow or down."""
        consumer = self._require()
        s = self.settings
        try:
            batch: Batch = await asyncio.wait_for(
                consumer.getmany(timeout_ms=s.fetch_timeout_ms, max_records=s.max_poll_records),
                s.fetch_timeout_ms / 1000 + s.broker_timeout_s,
            )
        except TimeoutError:
            self._mark_broker(False)
            log.warning("fetch from Kafka exceeded its %.1fs deadline", s.broker_timeout_s)
            return {}
        except KafkaError as err:
            self._mark_broker(False)
            log.warning("fetch from Kafka failed: %r", err)
            await asyncio.sleep(min(1.0, s.broker_timeout_s))
            return {}
        self._mark_broker(True)
        return batch

    def mark_applied(self, batch: Batch) -> None:
        """Record that every record of ``batch`` was applied; commit() will commit them."""
        for tp, records in batch.items():
            if records:
                nxt = records[-1].offset + 1
                self._pending[tp] = nxt
                self._next[tp] = nxt

    def update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for tp in self.assignment:
            high = consumer.highwater(tp)
            nxt = self._next.get(tp)
            if high is not None and nxt is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, high - nxt)
                )

    async def commit(self) -> bool:
        """Commit every applied offset; False (and kept pending) when the broker fails."""
        if not self._pending:
            return True
        consumer = self._require()
        offsets = {
            tp: OffsetAndMetadata(offset, "")
            for tp, offset in self._pending.items()
            if tp in self.assignment
        }
        if not offsets:
            self._pending.clear()
            return True
        try:
            await asyncio.wait_for(consumer.commit(offsets), self.settings.broker_timeout_s)
        except (TimeoutError, KafkaError) as err:
            self.metrics.commit_failures.inc()
            self._mark_broker(False)
            log.warning("offset commit failed, will retry after the next batch: %r", err)
            return False
        for tp, meta in offsets.items():
            self.metrics.committed_offset.labels(tp.topic, str(tp.partition)).set(meta.offset)
            if self._pending.get(tp) == meta.offset:
                del self._pending[tp]
        self._mark_broker(True)
        return True

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        # Waits for the batch in flight, so what is committed here is fully applied.
        async with self.batch_lock:
            await self.commit()
            if self._on_revoked_hook is not None:
                await self._on_revoked_hook(revoked)
            for tp in revoked:
                self._pending.pop(tp, None)
                self._next.pop(tp, None)
                with contextlib.suppress(KeyError):
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            self.assignment -= revoked
            self.metrics.partitions_assigned.set(len(self.assignment))
        log.info("partitions revoked: %s", sorted(f"{t.topic}[{t.partition}]" for t in revoked))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self.batch_lock:
            self.assignment = set(assigned)
            self.assignment_received = True
            self.metrics.partitions_assigned.set(len(self.assignment))
            if self._on_assigned_hook is not None:
                await self._on_assigned_hook(set(assigned))
        log.info("partitions assigned: %s", sorted(f"{t.topic}[{t.partition}]" for t in assigned))

    def _require(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("EventConsumer is not started")
        return self._consumer


class DeadLetterWriter:
    """Writes bad records (original bytes and headers) to the dead-letter topic and other
    side records (review samples); ``flush`` waits until the broker has them all.
    """

    def __init__(self, settings: KafkaSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._producer: AIOKafkaProducer | None = None
        self._inflight: list[asyncio.Future[Any]] = []
        self._log_window: dict[str, tuple[float, int]] = {}

    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(acks="all", linger_ms=5, **self.settings.client_options())
        try:
            await asyncio.wait_for(producer.start(), self.settings.broker_timeout_s)
        except (TimeoutError, KafkaError, OSError) as err:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), self.settings.broker_timeout_s)
            raise BrokerUnavailableError(
                f"cannot start the Kafka producer for {self.settings.bootstrap_servers!r}: {err!r}"
            ) from err
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        with contextlib.suppress(TimeoutError, KafkaError):
            await asyncio.wait_for(producer.stop(), self.settings.broker_timeout_s)

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], bad: BadRecord) -> None:
        headers = list(record.headers or ())
        headers += [
            ("driftwarden.reason", bad.reason.value.encode()),
            ("driftwarden.detail", bad.detail.encode()[:1000]),
            ("driftwarden.source.topic", record.topic.encode()),
            ("driftwarden.source.partition", str(record.partition).encode()),
            ("driftwarden.source.offset", str(record.offset).encode()),
        ]
        self._log_rate_limited(record, bad)
        await self.send(
            self.settings.dead_letter_topic, record.value, key=record.key, headers=headers
        )
        self.metrics.dead_lettered.inc()

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        producer = self._producer
        if producer is None:
            raise RuntimeError("DeadLetterWriter is not started")
        future = await asyncio.wait_for(
            producer.send(topic, value=value, key=key, headers=headers),
            self.settings.broker_timeout_s,
        )
        self._inflight.append(future)

    async def flush(self) -> None:
        """Wait until every record sent so far is acknowledged; raise if one failed."""
        inflight, self._inflight = self._inflight, []
        if inflight:
            await asyncio.wait_for(asyncio.gather(*inflight), self.settings.broker_timeout_s)

    def _log_rate_limited(self, record: ConsumerRecord[bytes, bytes], bad: BadRecord) -> None:
        # One line per reason per 10 s, with the count of the lines it stood for.
        now = time.monotonic()
        reason = bad.reason.value
        started, suppressed = self._log_window.get(reason, (0.0, -1))
        if now - started >= 10.0 or suppressed < 0:
            log.warning(
                "bad record at %s[%d]@%d: %s: %s%s",
                record.topic,
                record.partition,
                record.offset,
                reason,
                bad.detail,
                f" ({suppressed} more like it not logged)" if suppressed > 0 else "",
            )
            self._log_window[reason] = (now, 0)
        else:
            self._log_window[reason] = (started, suppressed + 1)
