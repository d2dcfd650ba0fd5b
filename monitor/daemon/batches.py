"""Applying one batch of records: decode (straight into columns when the engine's models
allow it, ``monitor.engine.decode.ColumnarPath``; else into events), skip what a restored
checkpoint holds, feed the engine, decide and checkpoint each transition mid-batch before
acting, count, and write the batch's bad records to the dead-letter topic (a batch whose
dead letters are not written is not committed).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka.structs import ConsumerRecord, TopicPartition

from monitor.actions.audit import coverage_entry
from monitor.actions.decisions import review_at
from monitor.engine.decode import ColumnarPath, DecodedBatch
from monitor.engine.events import BadRecord, Event, EventDecoder
from monitor.failpoints import failpoint
from monitor.kafka.consumer import Batch
from monitor.kafka.side_topics import SideTopicWriter

if TYPE_CHECKING:
    from monitor.actions.actions import Actions
    from monitor.engine.engine import Engine
    from monitor.engine.health import Transition
    from monitor.observability.metrics import Metrics
    from monitor.observability.publisher import SeriesPublisher
    from monitor.state.ownership import CheckpointOwner

__all__ = ["BatchApplier", "DeadLetters"]

log = logging.getLogger(__name__)


class DeadLetters:
    """The bad records of a batch: counted by reason, written to the dead-letter topic with
    the writer's bounded retries (``kafka.dead_letter_retry_s``)."""

    def __init__(
        self, writer: SideTopicWriter, metrics: Metrics, *, stopping: Callable[[], bool]
    ) -> None:
        self.writer = writer
        self.metrics = metrics
        #: Whether the daemon is stopping (the writer gives up its retries then).
        self.stopping = stopping

    async def write(self, bad: list[tuple[ConsumerRecord[bytes, bytes], BadRecord]]) -> bool:
        """Write the batch's dead letters (bounded retries inside the writer); False when
        they could not be written and the batch must not be committed."""
        reasons: dict[str, int] = {}
        for _, bad_record in bad:
            name = bad_record.reason.value
            reasons[name] = reasons.get(name, 0) + 1
        for name, count in reasons.items():
            self.metrics.bad_records.labels(name).inc(count)
        if not await self.writer.write_dead_letters(bad, stopping=self.stopping):
            return False
        return await self.flush_side_records()

    async def flush_side_records(self) -> bool:
        """Flush review samples and other side records; their loss never holds a commit."""
        try:
            await self.writer.flush()
        except Exception as err:
            log.warning("review/side records not acknowledged: %r", err)
        return True


class BatchApplier:
    """Applies batches to the engine for one daemon (under its batch lock)."""

    def __init__(
        self,
        engine: Engine,
        decoder: EventDecoder,
        actions: Actions,
        ownership: CheckpointOwner,
        publisher: SeriesPublisher,
        dead_letters: DeadLetters,
        metrics: Metrics,
        *,
        clock: Callable[[], float],
        forget_models: Callable[[list[str], str], Awaitable[None]],
        applied_log: str | None,
        columnar: bool = True,
    ) -> None:
        self.engine = engine
        self.decoder = decoder
        #: How each batch is decoded: into columns, or (None, or its choice) into events.
        self.columnar = ColumnarPath(engine, decoder.max_bytes) if columnar else None
        self.actions = actions
        self.ownership = ownership
        self.store = ownership.store
        self.publisher = publisher
        self.dead_letters = dead_letters
        self.side_writer = dead_letters.writer
        self.metrics = metrics
        self.clock = clock
        #: Drops models for good (evicted for newcomers): their series and checkpoints.
        self.forget_models = forget_models
        #: Events that reached a detector since the start.
        self.applied_events = 0
        #: The request ids of applied events, one a line (``engine.applied_log``; tests).
        self._applied_log: Any = None
        if applied_log is not None:
            self._applied_log = open(applied_log, "a", encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        if self._applied_log is not None:
            self._applied_log.close()
            self._applied_log = None

    async def apply(self, batch: Batch) -> bool:
        """Apply ``batch``; False when its dead letters could not be written (the batch must
        not be committed: a restart replays it)."""
        now = self.clock()
        bad: list[tuple[ConsumerRecord[bytes, bytes], BadRecord]] = []
        #: Per model of this batch: its partitions' last offsets (what its state holds once
        #: the model's span is applied).
        batch_offsets: dict[str, dict[TopicPartition, int]] = {}
        decoded = self._decode_columns(batch, bad, batch_offsets)
        events: Sequence[Event]
        if decoded is None:
            events = self._decode_events(batch, bad, batch_offsets)
            applied: Sequence[Event] | DecodedBatch = events
        else:
            # The rows stand for the events: every member but ``features`` (read through
            # the batch's columns), all the engine and the bookkeeping below read.
            events = decoded.rows
            applied = decoded
        before = self.engine.dropped_events
        refused_before = dict(self.engine.refused_events)
        acting = False
        for transitions in self.engine.apply_stepwise(applied, now):
            if transitions:
                await self.on_transitions(transitions, now, batch_offsets)
                acting = True
            if acting:
                # The flag and alert workers (reads, writes, their threads' results) move on
                # while the rest of the batch is applied: a breach does not wait for it.
                await asyncio.sleep(0)
                failpoint("batch.between_models")
        if decoded is None and self.columnar is not None:
            # After the engine: a model whose discovery ended in this batch no longer holds
            # the next one to its events.
            self.columnar.note([event.model for event in events])
        # Only watched models: a flood of refused ids must not grow these with the traffic.
        owned = self.ownership.owned
        watching = self.engine.models
        for model, offsets in batch_offsets.items():
            if model in watching:
                owned.dirty.add(model)
                owned.applied(model, offsets)
        dropped = self.engine.dropped_events - before
        # Events of a model with no monitor reach no detector: refused, not applied.
        self.applied_events += len(events) - dropped
        if self._applied_log is not None:
            ids = "".join(f"{e.request_id}\n" for e in events if e.request_id is not None)
            self._applied_log.write(ids)
            self._applied_log.flush()
        self.metrics.events_applied.inc(len(events) - dropped)
        self.publisher.count_events(self.engine.received)
        if dropped:
            self.metrics.models_dropped_events.inc(dropped)
            for reason, count in self.engine.refused_events.items():
                if count != refused_before[reason]:
                    self.metrics.events_refused.labels(reason.value).inc(
                        count - refused_before[reason]
                    )
        evicted = self.engine.take_evicted()
        if evicted:
            self.metrics.models_evicted.inc(len(evicted))
            await self.forget_models(evicted, "evicted for new models (max_models reached)")
        self.record_coverage()
        if decoded is not None:
            events = self._reviewed_in_full(decoded, batch)
        await self.actions.after_batch(events, self.engine, self.side_writer)
        # Only models whose Readings or health may have moved (the tick: what it moved).
        self.publisher.publish(set(self.engine.changed))
        if bad:
            return await self.dead_letters.write(bad)
        return await self.dead_letters.flush_side_records()

    def _decode_events(
        self,
        batch: Batch,
        bad: list[tuple[ConsumerRecord[bytes, bytes], BadRecord]],
        batch_offsets: dict[str, dict[TopicPartition, int]],
    ) -> list[Event]:
        """Each record into an :class:`Event` (or a bad record), skipping what a restored
        checkpoint holds."""
        events: list[Event] = []
        decode = self.decoder.decode
        track = self.store is not None
        replay_skip = self.ownership.owned.replay_skip
        for tp, records in batch.items():
            self.metrics.records_consumed.labels(tp.topic).inc(len(records))
            first = len(events)
            skip = replay_skip.get(tp)
            for record in records:
                decoded = decode(record.value)
                if isinstance(decoded, Event):
                    if skip is not None and record.offset <= skip.get(decoded.model, -1):
                        continue  # the model's restored checkpoint already holds it
                    events.append(decoded)
                else:
                    bad.append((record, decoded))
            if skip is not None and records and records[-1].offset >= max(skip.values()):
                del replay_skip[tp]
            if track and records:
                last = records[-1].offset
                for model in {event.model for event in events[first:]}:
                    batch_offsets.setdefault(model, {})[tp] = last
        return events

    def _decode_columns(
        self,
        batch: Batch,
        bad: list[tuple[ConsumerRecord[bytes, bytes], BadRecord]],
        batch_offsets: dict[str, dict[TopicPartition, int]],
    ) -> DecodedBatch | None:
        """The batch straight into columns, with the same bad records (in the same order)
        and offsets as ``_decode_events``; None: decode it into events. A batch some
        restored checkpoint holds part of takes the event path (a skip is per model and
        record: only right after a restore)."""
        columnar = self.columnar
        if columnar is None or any(tp in self.ownership.owned.replay_skip for tp in batch):
            return None
        values = [record.value for records in batch.values() for record in records]
        decoded = columnar.decode(values)
        if decoded is None:
            return None
        spans: list[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]], int]] = []
        start = 0
        for tp, records in batch.items():
            self.metrics.records_consumed.labels(tp.topic).inc(len(records))
            spans.append((tp, records, start))
            start += len(records)
        if decoded.bad:
            flat = [record for records in batch.values() for record in records]
            bad.extend((flat[at], found) for at, found in decoded.bad)
        if self.store is not None:
            positions = decoded.records
            models = decoded.models
            for tp, records, first in spans:
                if not records:
                    continue
                lo = bisect.bisect_left(positions, first)
                hi = bisect.bisect_left(positions, first + len(records))
                last = records[-1].offset
                for model in set(models[lo:hi]):
                    batch_offsets.setdefault(model, {})[tp] = last
        return decoded

    def _reviewed_in_full(self, decoded: DecodedBatch, batch: Batch) -> Sequence[Event]:
        """The events the review sample draws from: the rows, but those of models under
        review as full events (a review record carries the features). Nothing to do
        unless a review topic is set and some model's level reviews."""
        rows: list[Any] = decoded.rows
        if self.actions.review_topic is None:
            return rows
        reviewing = {
            model
            for model, monitor in self.engine.models.items()
            if review_at(monitor.policy, monitor.health.level) is not None
        }
        if not reviewing or reviewing.isdisjoint(decoded.models):
            return rows
        flat = [record for records in batch.values() for record in records]
        decode = self.decoder.decode
        full: list[Any] = list(rows)
        for i, model in enumerate(decoded.models):
            if model in reviewing and type(rows[i]) is not Event:
                event = decode(flat[decoded.records[i]].value)
                assert isinstance(event, Event)  # the column decoder accepted it
                full[i] = event
        return full

    def record_coverage(self) -> None:
        """One audit entry per model whose signals were built (its discovery ended)."""
        for built in self.engine.take_covered():
            log.debug("model %r watches %d signals", built.model, len(built.signals))
            self.actions.audit.write(coverage_entry(built))

    async def on_transitions(
        self,
        transitions: list[Transition],
        now: float,
        batch_offsets: dict[str, dict[TopicPartition, int]] | None,
    ) -> None:
        """Decide, checkpoint the deciding models, and only then act (intent before effect).

        The checkpoint holds the new health state, the records it was decided on (their
        offsets: a replay skips them) and the decided flags and notifications: a crash after
        it carries the decision out on restart, a crash before it decides again; either way
        the transition's effects happen once. Called mid-batch, right after the models' spans.
        """
        self.ownership.force = True
        for t in transitions:
            self.metrics.transitions.labels(t.model, t.from_level.label, t.to_level.label).inc()
            log.info("transition %s", t.describe())
        decided = self.actions.decide(transitions, now, self.engine)
        failpoint("transition.decided")
        if self.store is not None and decided:
            if batch_offsets:
                # Mid-batch: the batch's bookkeeping of watched models comes after it. Every
                # model whose span is in its state already (with banks: all of the batch's),
                # not only the deciding ones: after a store outage all models are written
                # now, and one saved with the offsets before the batch would apply the batch
                # twice after a kill -9 (its replay would not skip it).
                for model in self.engine.applied_models:
                    offsets = batch_offsets.get(model)
                    if offsets:
                        self.ownership.owned.applied(model, offsets)
            if not await self.ownership.checkpoint(decided):
                # Availability first: a store down must not stop the fail-safe flip or the
                # page; those effects are at-least-once until the store is back.
                log.warning("acting on %d transitions without their checkpoint", len(decided))
            failpoint("transition.saved")
        self.actions.dispatch()
        failpoint("transition.dispatched")
