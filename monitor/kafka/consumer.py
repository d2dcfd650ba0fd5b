"""The Kafka consumer: getmany batches read partition by partition, manual commits, the
rebalance listener, a deadline on every broker wait, unreadable partitions paused and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import (
    CorruptRecordException,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedCodecError,
)
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

from monitor.config.settings import KafkaSettings
from monitor.errors import BrokerUnavailableError
from monitor.kafka.backoff import Backoff
from monitor.kafka.quirks import (
    ClientErrorsHeldBack,
    being_cancelled,
    close_after_interrupted_stop,
    lost_committed_offsets,
    next_fetch_response,
    positions_past_log_end,
)
from monitor.observability.metrics import Metrics

__all__ = ["Batch", "EventConsumer", "UnreadablePartition"]

log = logging.getLogger(__name__)

#: How often an idle consumer proves with a metadata request that the broker is there.
PROBE_INTERVAL_S = 1.0

#: Bounded backoff between reads of a partition whose records could not be read: doubles from
#: the first to the last value (a codec library installed, a transient broker answer heals).
UNREADABLE_RETRY_FIRST_S = 1.0
UNREADABLE_RETRY_MAX_S = 30.0

#: Errors aiokafka raises out of getmany() for one partition's records (unpacking a batch or
#: a per-partition fetch error). Any exception that is not a KafkaError comes from unpacking
#: too (a decompressor's own error on a corrupt batch); other KafkaErrors concern the whole
#: consumer (stopped, group coordination).
PARTITION_ERRORS: tuple[type[KafkaError], ...] = (
    UnsupportedCodecError,
    CorruptRecordException,
    RecordTooLargeError,
    OffsetOutOfRangeError,
    NoOffsetForPartitionError,
    TopicAuthorizationFailedError,
)

PartitionHook = Callable[[set[TopicPartition]], Awaitable[None]]
Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


def _is_partition_error(err: Exception) -> bool:
    return isinstance(err, PARTITION_ERRORS) or not isinstance(err, KafkaError)


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


@dataclass(slots=True)
class UnreadablePartition:
    """A partition whose records could not be read: paused, retried with backoff, never
    committed past (its offset stays where reading stopped)."""

    tp: TopicPartition
    #: The position where reading stopped: the first offset not yet handed to the daemon.
    offset: int | None
    reason: str
    detail: str
    since: float
    failures: int
    retry_at: float
    #: True while the partition is resumed for a retry (not yet known to be readable).
    retrying: bool = False

    def describe(self, now: float) -> str:
        at = "?" if self.offset is None else str(self.offset)
        state = (
            "retrying now"
            if self.retrying
            else f"next retry in {max(0.0, self.retry_at - now):.1f}s"
        )
        return (
            f"Kafka partition {_name(self.tp)} unreadable at offset {at} for "
            f"{now - self.since:.1f}s ({self.failures} failed reads, {state}): "
            f"{self.reason}: {self.detail}"
        )


#: While the broker is down: how often "still unreachable" is logged, 5 s doubling to 60 s.
OUTAGE_REPORTS = Backoff(first_s=5.0, max_s=60.0, jitter=0.0)


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
        #: The offset this consumer last committed per partition (kept across revokes: the
        #: broker holds it, or more if another replica committed since).
        self._committed: dict[TopicPartition, int] = {}
        #: Set by an outage: before the next commit, ask whether the broker still holds
        #: ``_committed`` (see quirks.lost_committed_offsets).
        self._check_committed = False
        self._next: dict[TopicPartition, int] = {}
        #: Fetch position of each assigned partition that has applied nothing yet: its lag
        #: is measured from there, so a partition stuck from its start shows up too.
        self._start: dict[TopicPartition, int] = {}
        self.assignment: set[TopicPartition] = set()
        self.assignment_received = False
        #: True between a revoke and the next assignment (rejoining the group).
        self.rejoining = False
        self.broker_ok_at: float | None = None
        self.broker_failed_at: float | None = None
        self._outage_started_at = 0.0
        #: Times the broker went from reachable to unreachable.
        self.outages = 0
        self._held_back: ClientErrorsHeldBack | None = None
        self._report_at = 0.0
        self._report_delays = OUTAGE_REPORTS.delays()
        self._probed_at = 0.0
        #: Partitions paused because their records could not be read (see fetch()).
        self.unreadable: dict[TopicPartition, UnreadablePartition] = {}
        #: Rotates the partition read first, so one busy partition cannot starve the others.
        self._read_turn = 0

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
            self.mark_broker(False)
            raise BrokerUnavailableError(
                f"cannot reach Kafka at {s.bootstrap_servers!r} within {s.broker_timeout_s}s: "
                f"{err!r}"
            ) from err
        listener = _Listener(self)
        try:
            if s.topic_pattern is not None:
                consumer.subscribe(pattern=s.topic_pattern, listener=listener)
            else:
                consumer.subscribe(topics=list(s.topics), listener=listener)
        except Exception:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), s.broker_timeout_s)
            raise
        self._consumer = consumer
        self.mark_broker(True)

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._end_outage_log()
        if consumer is None:
            return
        try:
            await asyncio.wait_for(consumer.stop(), self.settings.broker_timeout_s)
        except (TimeoutError, KafkaError, OSError) as err:
            log.warning("consumer did not stop cleanly: %r", err)
        except asyncio.CancelledError:
            if being_cancelled():
                raise
            await close_after_interrupted_stop(consumer, self.settings.broker_timeout_s)

    def mark_broker(self, ok: bool) -> None:
        """Record the outcome of a broker call (any client of this daemon); sets broker_up."""
        now = time.monotonic()
        was_reachable = self.broker_reachable
        if ok:
            if not was_reachable and self.broker_failed_at is not None:
                held = self._end_outage_log()
                log.info(
                    "Kafka broker reachable again after %.1fs (%d client errors held back)",
                    now - self._outage_started_at,
                    held,
                )
            self.broker_ok_at = now
        else:
            if not was_reachable:
                self._report_outage(now)
            if was_reachable:
                self._outage_started_at = now
                self.outages += 1
                self._start_outage_log(now)
                # The broker that comes back may have lost its data (Tansu, a recreated
                # cluster): the next commit first checks it still holds our offsets.
                self._check_committed = True
            self.broker_failed_at = now
        self.metrics.broker_up.set(1 if ok else 0)

    def _start_outage_log(self, now: float) -> None:
        if self._held_back is None:
            self._held_back = ClientErrorsHeldBack()
            self._held_back.attach()
        self._report_delays = OUTAGE_REPORTS.delays()
        self._report_at = now + next(self._report_delays)

    def _report_outage(self, now: float) -> None:
        held_back = self._held_back
        if held_back is None or now < self._report_at:
            return
        log.warning(
            "Kafka broker at %s still unreachable after %.0fs (%d client errors held back, "
            "last: %s); next report in %.0fs",
            self.settings.bootstrap_servers,
            now - self._outage_started_at,
            held_back.held,
            held_back.last,
            delay := next(self._report_delays),
        )
        self._report_at = now + delay

    def _end_outage_log(self) -> int:
        held_back, self._held_back = self._held_back, None
        if held_back is None:
            return 0
        held_back.detach()
        return held_back.held

    async def fetch(self) -> Batch:
        """One batch under a deadline; an empty batch when the broker is slow or down.

        Records are read partition by partition: aiokafka raises a partition's unpacking
        error (a codec it lacks, a corrupt batch) out of a getmany() over all partitions and
        drops the records it had already taken from the others, so one unreadable partition
        would stall every partition of the consumer. Here it is paused and retried instead
        (see UnreadablePartition); the others go on.
        """
        consumer = self._require()
        s = self.settings
        self._resume_due(consumer)
        try:
            batch = await asyncio.wait_for(
                self._read(consumer, s.fetch_timeout_ms, s.max_poll_records),
                s.fetch_timeout_ms / 1000 + s.broker_timeout_s,
            )
        except TimeoutError:
            # getmany() also blocks while the group rejoins: only a failed probe means down.
            log.warning("fetch from Kafka exceeded its %.1fs deadline", s.broker_timeout_s)
            await self.probe()
            return {}
        except KafkaError as err:
            self.mark_broker(False)
            log.warning("fetch from Kafka failed: %r", err)
            await asyncio.sleep(min(1.0, s.broker_timeout_s))
            return {}
        if batch:
            self.mark_broker(True)
            await self._top_up(consumer, batch)
        elif time.monotonic() - self._probed_at >= PROBE_INTERVAL_S and await self.probe():
            # getmany() answers an empty batch both when the topic is idle and when the
            # broker is gone (aiokafka only logs its connection errors): the probe tells.
            await self.reset_positions_past_log_end()
        return batch

    async def _read(self, consumer: AIOKafkaConsumer, timeout_ms: int, max_records: int) -> Batch:
        """What the fetcher holds for the readable partitions, or what its next fetch
        answers within ``timeout_ms``."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            batch = await self._drain(consumer, max_records)
            left = deadline - time.monotonic()
            if batch or left <= 0:
                return batch
            await next_fetch_response(consumer, left)

    async def _drain(self, consumer: AIOKafkaConsumer, max_records: int) -> Batch:
        """Take, without waiting, up to ``max_records`` the fetcher already holds, one
        partition at a time so that an error names its partition and costs no other
        partition its records."""
        unreadable = self.unreadable
        readable = sorted(
            (tp for tp in consumer.assignment() if tp not in unreadable or unreadable[tp].retrying),
            key=lambda tp: (tp.topic, tp.partition),
        )
        batch: Batch = {}
        if not readable:
            return batch
        self._read_turn = (self._read_turn + 1) % len(readable)
        left = max_records
        for tp in readable[self._read_turn :] + readable[: self._read_turn]:
            try:
                records = (await consumer.getmany(tp, timeout_ms=0, max_records=left)).get(tp)
            except Exception as err:
                if not _is_partition_error(err):
                    if batch:
                        # The whole consumer failed: hand out what was read; the next
                        # fetch meets the error again.
                        return batch
                    raise
                await self._mark_unreadable(consumer, tp, err)
                continue
            if not records:
                continue
            batch[tp] = records
            if tp in self.unreadable:
                self._mark_readable(tp, records[0].offset)
            left -= len(records)
            if left <= 0:
                break
        return batch

    async def _top_up(self, consumer: AIOKafkaConsumer, batch: Batch) -> None:
        """Merge what the fetcher already holds into ``batch``, within a small time budget.

        With many models each batch gives every model only a few events; a bigger batch lets
        each detector update once for more events (its fixed cost per call dominates).
        """
        s = self.settings
        have = sum(len(r) for r in batch.values())
        deadline = time.monotonic() + s.batch_max_wait_ms / 1000
        while have < s.max_poll_records:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return
            try:
                more: Batch = await asyncio.wait_for(
                    self._read(consumer, min(10, left_ms), s.max_poll_records - have),
                    s.broker_timeout_s,
                )
            except (TimeoutError, KafkaError):
                return  # keep what was fetched; the next fetch sees the problem
            if not more:
                return
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
                have += len(records)

    async def _mark_unreadable(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, err: Exception
    ) -> None:
        """Pause ``tp`` after its records could not be read; retry it with backoff."""
        now = time.monotonic()
        offset: int | None
        try:
            offset = await asyncio.wait_for(consumer.position(tp), self.settings.broker_timeout_s)
        except (TimeoutError, KafkaError):
            offset = None
        known = self.unreadable.get(tp)
        failures = 1 if known is None else known.failures + 1
        delay = min(UNREADABLE_RETRY_MAX_S, UNREADABLE_RETRY_FIRST_S * 2 ** (failures - 1))
        reason = type(err).__name__
        detail = str(err) or repr(err)
        entry = UnreadablePartition(
            tp=tp,
            offset=offset,
            reason=reason,
            detail=detail[:500],
            since=now if known is None else known.since,
            failures=failures,
            retry_at=now + delay,
        )
        if tp not in consumer.assignment():
            return  # revoked while its position was asked for: its new owner reads it
        self.unreadable[tp] = entry
        consumer.pause(tp)
        self.metrics.fetch_errors.labels(tp.topic, str(tp.partition)).inc()
        self.metrics.partition_unreadable.labels(tp.topic, str(tp.partition)).set(1)
        # Bounded by the backoff: at most one line per partition per retry.
        log.warning(
            "%s: cannot read records at offset %s (%s: %s); partition paused, nothing "
            "committed past it, retry %d in %.1fs",
            _name(tp),
            "?" if offset is None else offset,
            reason,
            entry.detail,
            failures,
            delay,
        )

    def _mark_readable(self, tp: TopicPartition, offset: int) -> None:
        entry = self.unreadable.pop(tp)
        self.metrics.partition_unreadable.labels(tp.topic, str(tp.partition)).set(0)
        log.info(
            "%s: readable again at offset %d after %d failed reads over %.1fs",
            _name(tp),
            offset,
            entry.failures,
            time.monotonic() - entry.since,
        )

    def _resume_due(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        assigned = consumer.assignment()
        for entry in self.unreadable.values():
            if not entry.retrying and entry.retry_at <= now and entry.tp in assigned:
                entry.retrying = True
                consumer.resume(entry.tp)

    def _forget_unreadable(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self.unreadable.pop(tp, None)
            for metric in (self.metrics.partition_unreadable, self.metrics.fetch_errors):
                with contextlib.suppress(KeyError):
                    metric.remove(tp.topic, str(tp.partition))

    def unreadable_problems(self) -> list[str]:
        """One line per unreadable partition, for /readyz and /status."""
        now = time.monotonic()
        return [
            self.unreadable[tp].describe(now)
            for tp in sorted(self.unreadable, key=lambda t: (t.topic, t.partition))
        ]

    async def probe(self) -> bool:
        """One metadata request under the broker deadline; True when the broker answered."""
        consumer = self._require()
        self._probed_at = time.monotonic()
        try:
            await asyncio.wait_for(consumer.topics(), self.settings.broker_timeout_s)
        except (TimeoutError, KafkaError, OSError) as err:
            if self.broker_reachable:
                log.warning("Kafka broker unreachable: %r", err)
            self.mark_broker(False)
            return False
        self.mark_broker(True)
        return True

    async def reset_positions_past_log_end(self) -> list[TopicPartition]:
        """Move every position beyond its partition's high watermark back per
        ``auto_offset_reset``; return the partitions moved (none on a broker that answers
        OFFSET_OUT_OF_RANGE: see quirks.positions_past_log_end).
        """
        consumer = self._require()
        s = self.settings
        moved = []
        for tp in consumer.assignment() & self.assignment:
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), s.broker_timeout_s)
                if tp not in positions_past_log_end({tp: position}, {tp: high}):
                    continue
                log.warning(
                    "%s[%d]: position %d is past the log end %d (log lost in a broker "
                    "restart?): resetting to %s",
                    tp.topic,
                    tp.partition,
                    position,
                    high,
                    s.auto_offset_reset,
                )
                if s.auto_offset_reset == "earliest":
                    await asyncio.wait_for(consumer.seek_to_beginning(tp), s.broker_timeout_s)
                else:
                    consumer.seek(tp, high)
            except (TimeoutError, KafkaError) as err:
                log.warning("cannot check the position of %s: %r", tp, err)
                continue
            self._pending.pop(tp, None)
            self._next.pop(tp, None)
            self._start.pop(tp, None)
            moved.append(tp)
        return moved

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
            if nxt is None:
                nxt = self._start.get(tp)
            if high is not None and nxt is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, high - nxt)
                )

    async def track_unapplied_partitions(self) -> None:
        """Note the fetch position of assigned partitions that have applied no record yet,
        then export every assigned partition's lag (called each tick, not per batch)."""
        consumer = self._consumer
        if consumer is None or not self.broker_reachable:
            return
        for tp in list(self.assignment):
            if tp in self._next or tp in self._start:
                continue
            try:
                # Short: this runs on the tick, and a partition not found now is next tick.
                position = await asyncio.wait_for(
                    consumer.position(tp), min(1.0, self.settings.broker_timeout_s)
                )
            except (TimeoutError, KafkaError) as err:
                log.debug("no position yet for %s: %r", tp, err)
                continue
            if tp in self.assignment and tp not in self._next:
                self._start[tp] = position
        for tp in [tp for tp in self._start if tp not in self.assignment or tp in self._next]:
            del self._start[tp]
        self.update_lag()

    async def commit(self) -> bool:
        """Commit every applied offset; False when the broker fails (the offsets stay
        pending for the next commit). After an outage the offsets are dropped instead when
        the broker lost the ones committed before it (see _drop_offsets_of_a_lost_log)."""
        if not self._pending:
            return True
        consumer = self._require()
        if self._check_committed:
            if not await self._drop_offsets_of_a_lost_log(consumer):
                return False
            if not self._pending:
                return True
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
            self.mark_broker(False)
            log.warning("offset commit failed, will retry after the next batch: %r", err)
            return False
        for tp, meta in offsets.items():
            self._committed[tp] = meta.offset
            self.metrics.committed_offset.labels(tp.topic, str(tp.partition)).set(meta.offset)
            if self._pending.get(tp) == meta.offset:
                del self._pending[tp]
        self.mark_broker(True)
        return True

    async def _drop_offsets_of_a_lost_log(self, consumer: AIOKafkaConsumer) -> bool:
        """After an outage, ask the broker for the offsets committed before it; when it lost
        them (Tansu keeps nothing across a restart) the pending offsets may point past its
        new log end: drop them (the next batch commits past them anyway, and a crash before
        it only replays). False when the broker did not answer (the check is retried)."""
        ours = {tp: offset for tp, offset in self._committed.items() if tp in self.assignment}
        try:
            theirs = {
                tp: await asyncio.wait_for(consumer.committed(tp), self.settings.broker_timeout_s)
                for tp in ours
            }
        except (TimeoutError, KafkaError) as err:
            # Not proof of an outage (the group may be rejoining): the check runs again on
            # the next commit.
            log.warning("cannot read the committed offsets after an outage: %r", err)
            return False
        self._check_committed = False
        if lost_committed_offsets(ours, theirs):
            log.warning(
                "the broker lost the offsets committed before the outage: dropping %d "
                "uncommitted offsets",
                len(self._pending),
            )
            self._pending.clear()
            self._committed.clear()
        return True

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        # Waits for the batch in flight, so what is committed here is fully applied.
        async with self.batch_lock:
            # The hook checkpoints the leaving models first: state, then offsets.
            if self._on_revoked_hook is not None:
                await self._on_revoked_hook(revoked)
            await self.commit()
            for tp in revoked:
                self._pending.pop(tp, None)
                self._next.pop(tp, None)
                self._start.pop(tp, None)
                with contextlib.suppress(KeyError):
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            self._forget_unreadable(revoked)
            self.assignment -= revoked
            self.rejoining = True
            self.metrics.partitions_assigned.set(len(self.assignment))
        log.info("partitions revoked: %s", sorted(f"{t.topic}[{t.partition}]" for t in revoked))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self.batch_lock:
            # State first: the partitions count as ours (and /readyz as ready) only once
            # their models are restored.
            if self._on_assigned_hook is not None:
                await self._on_assigned_hook(set(assigned))
            self.assignment = set(assigned)
            self._forget_unreadable(set(self.unreadable) - self.assignment)
            for tp in self.assignment:
                # Every owned partition has its series (0 while readable), for dashboards
                # and alert rules alike.
                partition = str(tp.partition)
                self.metrics.partition_unreadable.labels(tp.topic, partition).set(
                    1 if tp in self.unreadable else 0
                )
                self.metrics.fetch_errors.labels(tp.topic, partition)
            consumer = self._consumer
            if consumer is not None:
                # A new assignment starts unpaused: what is still known unreadable waits
                # for its retry.
                for entry in self.unreadable.values():
                    if not entry.retrying:
                        consumer.pause(entry.tp)
            self.assignment_received = True
            self.rejoining = False
            self.metrics.partitions_assigned.set(len(self.assignment))
        log.info("partitions assigned: %s", sorted(f"{t.topic}[{t.partition}]" for t in assigned))

    def _require(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("EventConsumer is not started")
        return self._consumer
