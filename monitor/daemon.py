"""The daemon: composes consumer, engine, actions and HTTP server, runs the batch loop and
shuts down in order (stop fetching, finish the batch, commit, flush actions, stop components).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiokafka.structs import ConsumerRecord, TopicPartition

from monitor import __version__
from monitor.actions import Actions
from monitor.consumer import Batch, DeadLetterWriter, EventConsumer, ensure_topics
from monitor.engine import Engine
from monitor.errors import BrokerUnavailableError
from monitor.events import BadRecord, Event, EventDecoder
from monitor.health import Transition
from monitor.http import HttpServer, LoopHeartbeat
from monitor.metrics import HEALTH_STATES, Metrics
from monitor.runtime import tuned_runtime
from monitor.settings import Settings
from monitor.state import (
    CheckpointStore,
    DirectoryStore,
    KafkaStore,
    read_header,
    restore_model,
    snapshot_model,
)

__all__ = ["HANDLED_SIGNALS", "Daemon"]


log = logging.getLogger(__name__)

#: SIGTERM is how Kubernetes asks a pod to stop; SIGINT is Ctrl-C. The first asks for a
#: graceful stop; a second one forces it.
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        actions: Actions | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics.create()
        self.clock = clock
        self.engine = Engine(settings.policy_for, max_models=settings.engine.max_models)
        self.decoder = EventDecoder(settings.kafka.max_record_bytes)
        self.consumer = EventConsumer(
            settings.kafka,
            self.metrics,
            on_assigned=self._on_assigned,
            on_revoked=self._on_revoked,
        )
        self.side_writer = DeadLetterWriter(settings.kafka, self.metrics)
        self.actions = (
            actions
            if actions is not None
            else Actions.from_settings(settings, self.metrics, clock=clock)
        )
        self.heartbeat = LoopHeartbeat(self.metrics)
        self.http = HttpServer(
            settings.http.host,
            settings.http.port,
            self.metrics,
            self,
            extra_routes=self._add_routes,
        )
        self._stop = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._started_at = time.monotonic()
        self._last_batch_at: float | None = None
        #: When the batch being applied was taken (None between batches).
        self._batch_started_at: float | None = None
        self.metrics.batch_in_flight.set_function(self.batch_age)
        self._signal_children: dict[tuple[str, str], Any] = {}
        self.store = _build_store(settings)
        #: Partition each model's events come from: its checkpoint follows that partition.
        self._model_partition: dict[str, TopicPartition] = {}
        self._dirty: set[str] = set()
        #: When each model's state was last written to (or read from) the store.
        self._saved_at: dict[str, float] = {}
        self._last_checkpoint = time.monotonic()
        self.restored_models = 0
        self._force_checkpoint = False
        self._store_outages = 0
        self.applied_events = 0
        self._applied_log: Any = None
        if settings.engine.applied_log is not None:
            self._applied_log = open(settings.engine.applied_log, "a", encoding="utf-8")  # noqa: SIM115

    # ----------------------------------------------------------------- lifecycle

    def request_stop(self, reason: str = "requested") -> None:
        if not self._stop.is_set():
            log.info("graceful stop: %s", reason)
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self.handle_exit, sig)

    def handle_exit(self, sig: int) -> None:
        if self._stop.is_set():
            log.warning("second %s: forcing exit", signal.Signals(sig).name)
            if self._loop_task is not None:
                self._loop_task.cancel()
            return
        self.request_stop(signal.Signals(sig).name)

    async def run(self) -> int:
        """Run until stopped; return the process exit code."""
        with tuned_runtime():
            return await self._run()

    async def _run(self) -> int:
        s = self.settings
        grace = s.lifecycle.grace_period_s
        await self.heartbeat.start()
        await self.http.start()
        try:
            await self._start_kafka()
        except BrokerUnavailableError as err:
            log.error("%s", err)
            await self._shutdown_components(grace)
            return 1
        if self.store is not None:
            try:
                await self.store.start()
            except Exception as err:
                log.error("checkpoint store unavailable: %r", err)
                await self._shutdown_components(grace)
                return 1
        await self.actions.start()
        tick = asyncio.create_task(self._tick_loop(), name="health-tick")
        self._loop_task = asyncio.create_task(self._batch_loop(), name="batch-loop")
        exit_code = 0
        try:
            await self._loop_task
        except asyncio.CancelledError:
            log.warning("batch loop cancelled (forced stop)")
            exit_code = 1
        except Exception:
            log.exception("batch loop died")
            exit_code = 1
        started = time.monotonic()
        tick.cancel()
        await asyncio.gather(tick, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, grace - 1.0)):
                log.info("shutdown: checkpointing and committing offsets")
                async with self.consumer.batch_lock:
                    self._force_checkpoint = True
                    await self._commit_point()
        log.info("shutdown: flushing actions")
        await self.actions.stop(flush_timeout_s=max(0.1, grace - (time.monotonic() - started) - 1))
        await self._shutdown_components(max(0.1, grace - (time.monotonic() - started)))
        if self._applied_log is not None:
            self._applied_log.close()
        log.info("shutdown complete in %.2fs", time.monotonic() - started)
        return exit_code

    async def _start_kafka(self) -> None:
        s = self.settings.kafka
        # One view of the broker: a failed dead-letter write also fails /readyz.
        self.side_writer.broker = self.consumer
        deadline = time.monotonic() + max(30.0, s.broker_timeout_s * 3)
        while True:
            try:
                if s.create_topics:
                    await ensure_topics(
                        s,
                        {s.dead_letter_topic: {"partitions": 1}, s.review_topic: {"partitions": 1}},
                        s.broker_timeout_s,
                    )
                await self.side_writer.start()
                await self.consumer.start()
                return
            except Exception as err:  # any start-up failure is retried until the deadline
                if time.monotonic() > deadline or self._stop.is_set():
                    raise BrokerUnavailableError(f"Kafka unavailable at start: {err!r}") from err
                log.warning("Kafka not reachable yet (%r); retrying", err)
                await asyncio.sleep(1.0)

    async def _shutdown_components(self, budget_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(budget_s):
                await self.consumer.stop()
                await self.side_writer.stop()
                if self.store is not None:
                    await self.store.stop()
        await self.http.stop()
        await self.heartbeat.stop()

    # ----------------------------------------------------------------- the batch loop

    async def _batch_loop(self) -> None:
        while not self._stop.is_set():
            batch = await self.consumer.fetch()
            if not batch:
                continue
            async with self.consumer.batch_lock:
                # A rebalance may have run between the fetch and the lock: records of a
                # partition revoked meanwhile belong to its new owner (it reads them from the
                # committed offset), and applying them here would act for a model we no
                # longer own.
                owned = self.consumer.assignment
                if any(tp not in owned for tp in batch):
                    batch = {tp: records for tp, records in batch.items() if tp in owned}
                    if not batch:
                        continue
                started = time.perf_counter()
                self._batch_started_at = time.monotonic()
                try:
                    applied = await self._apply(batch)
                    if applied:
                        self.consumer.mark_applied(batch)
                        await self._commit_point()
                finally:
                    self._batch_started_at = None
                if not applied:
                    # Dead letters could not be written: do not commit; replay after restart.
                    if self._stop.is_set():
                        return
                    raise BrokerUnavailableError(
                        "dead letters not written within kafka.dead_letter_retry_s="
                        f"{self.settings.kafka.dead_letter_retry_s}s "
                        f"({self.side_writer.last_error}); exiting without committing the "
                        "batch: a restart replays it"
                    )
                self.consumer.update_lag()
                self.metrics.batch_duration.observe(time.perf_counter() - started)
                self.metrics.batches.inc()
                self._last_batch_at = time.monotonic()

    async def _apply(self, batch: Batch) -> bool:
        now = self.clock()
        events: list[Event] = []
        bad: list[tuple[ConsumerRecord[bytes, bytes], BadRecord]] = []
        decode = self.decoder.decode
        track = self.store is not None
        for tp, records in batch.items():
            self.metrics.records_consumed.labels(tp.topic).inc(len(records))
            first = len(events)
            for record in records:
                decoded = decode(record.value)
                if isinstance(decoded, Event):
                    events.append(decoded)
                else:
                    bad.append((record, decoded))
            if track:
                models = {event.model for event in events[first:]}
                self._dirty |= models
                for model in models:
                    self._model_partition[model] = tp
        before = self.engine.dropped_events
        acting = False
        for transitions in self.engine.apply_stepwise(events, now):
            if transitions:
                self._on_transitions(transitions, now)
                acting = True
            if acting:
                # The flag and alert workers (reads, writes, their threads' results) move on
                # while the rest of the batch is applied: a breach does not wait for it.
                await asyncio.sleep(0)
        self.applied_events += len(events)
        if self._applied_log is not None:
            ids = "".join(f"{e.request_id}\n" for e in events if e.request_id is not None)
            self._applied_log.write(ids)
            self._applied_log.flush()
        self.metrics.events_applied.inc(len(events))
        dropped = self.engine.dropped_events - before
        if dropped:
            self.metrics.models_dropped_events.inc(dropped)
        await self.actions.after_batch(events, self.engine, self.side_writer)
        # Only models whose Readings or health may have moved (the tick publishes all).
        self._publish_models(set(self.engine.changed))
        if bad:
            return await self._dead_letter(bad)
        return await self._flush_side_records()

    async def _dead_letter(self, bad: list[tuple[ConsumerRecord[bytes, bytes], BadRecord]]) -> bool:
        """Write the batch's dead letters (bounded retries inside the writer); False when
        they could not be written and the batch must not be committed."""
        reasons: dict[str, int] = {}
        for _, bad_record in bad:
            name = bad_record.reason.value
            reasons[name] = reasons.get(name, 0) + 1
        for name, count in reasons.items():
            self.metrics.bad_records.labels(name).inc(count)
        if not await self.side_writer.write_dead_letters(bad, stopping=self._stop.is_set):
            return False
        return await self._flush_side_records()

    async def _flush_side_records(self) -> bool:
        try:
            await self.side_writer.flush()
        except Exception as err:
            log.warning("review/side records not acknowledged: %r", err)
        return True

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            async with self.consumer.batch_lock:
                now = self.clock()
                transitions = self.engine.tick(now)
                if transitions:
                    self._on_transitions(transitions, now)
                self.actions.tick(now)
                await self._expire_idle_models(now)
                if self.store is not None and self.consumer.assignment:
                    await self._commit_point()
                self._publish_models(set(self.engine.models))
                self.metrics.models_active.set(len(self.engine.models))

    def _on_transitions(self, transitions: list[Transition], now: float) -> None:
        # A transition is checkpointed before the next commit, so a replica taking over
        # continues from the new state instead of deciding (and paging) again.
        self._force_checkpoint = True
        for t in transitions:
            self.metrics.transitions.labels(t.model, t.from_level.label, t.to_level.label).inc()
            log.info("transition %s", t.describe())
        self.actions.on_transitions(transitions, self.engine, now)

    def _unpublish(self, model: str) -> None:
        """Remove a model's series once this replica no longer owns it, so dashboards and
        rollout gates never read a stale state from a replica that handed the model over.
        """
        m = self.metrics
        for key in [k for k in self._signal_children if k[0] == model]:
            del self._signal_children[key]
        for metric in (
            m.health_level,
            m.health_state,
            m.signal_value,
            m.signal_effect,
            m.signal_breached,
            m.signal_samples,
            m.signal_threshold,
        ):
            for labels in [lv for lv in list(metric._metrics) if lv[0] == model]:
                with contextlib.suppress(KeyError):
                    metric.remove(*labels)

    def _publish_models(self, models: set[str]) -> None:
        # Called after every batch for every model in it, and each second for all models:
        # bound children are kept, and a gauge is set only when its value may have changed
        # (a detector hands back the same Reading object until it tests again).
        m = self.metrics
        cache = self._signal_children
        for model in models:
            monitor = self.engine.models.get(model)
            if monitor is None:
                continue
            state = monitor.health.level
            # Key (model, ""): the model's own gauges (a member name is never empty).
            health = cache.get((model, ""))
            if health is None:
                health = cache[(model, "")] = [
                    m.health_level.labels(model),
                    [(name, m.health_state.labels(model, name)) for name in HEALTH_STATES],
                    None,
                ]
            if health[2] is not state:
                health[0].set(int(state))
                for name, child in health[1]:
                    child.set(1 if name == state.label else 0)
                health[2] = state
            for signal_monitor in monitor.signals:
                for member in signal_monitor.members:
                    r = member.reading
                    key = (model, member.name)
                    children = cache.get(key)
                    if children is None:
                        thresholds = signal_monitor.policy.thresholds
                        children = cache[key] = [
                            m.signal_value.labels(model, member.name),
                            m.signal_effect.labels(model, member.name),
                            m.signal_breached.labels(model, member.name),
                            m.signal_samples.labels(model, member.name),
                            None
                            if thresholds is not None
                            else m.signal_threshold.labels(model, member.name, "detector"),
                            None,
                        ]
                        if thresholds is not None:
                            for lvl, bound in thresholds.items():
                                m.signal_threshold.labels(model, member.name, lvl.label).set(bound)
                    elif children[5] is r:
                        continue
                    children[5] = r
                    children[0].set(r.statistic)
                    children[1].set(r.effect)
                    children[2].set(1 if r.breached else 0)
                    children[3].set(r.samples)
                    if children[4] is not None:
                        children[4].set(r.threshold)

    def _add_routes(self, app: web.Application) -> None:
        from monitor.operator import add_gate_routes, add_operator_routes

        add_gate_routes(app, self.engine)
        add_operator_routes(app, self.actions)
        try:
            status_page = importlib.import_module("monitor.status_page")
        except ImportError:
            return
        status_page.add_routes(app, self)

    # ----------------------------------------------------------------- rebalance hooks

    async def _expire_idle_models(self, now: float) -> None:
        ttl = self.settings.engine.model_idle_ttl_s
        idle = [
            model
            for model, monitor in self.engine.models.items()
            if monitor.last_event_at is not None and now - monitor.last_event_at > ttl
        ]
        if not idle:
            return
        for model in idle:
            self._unpublish(model)
            self.engine.drop(model)
            self._model_partition.pop(model, None)
            self._dirty.discard(model)
        log.info("dropped %d models idle for over %.0fs", len(idle), ttl)
        if self.store is not None:
            try:
                await self.store.delete(idle)
            except Exception as err:
                log.warning("cannot delete checkpoints of idle models: %r", err)

    async def _commit_point(self) -> None:
        """Commit applied offsets; with a state store, only right after a checkpoint."""
        store = self.store
        if store is None:
            await self.consumer.commit()
            return
        due = time.monotonic() - self._last_checkpoint >= self.settings.state.interval_s
        if not (due or self._force_checkpoint):
            return
        if await self._checkpoint(set(self._dirty)):
            self._force_checkpoint = False
            await self.consumer.commit()

    async def _checkpoint(self, models: set[str]) -> bool:
        store = self.store
        if store is None:
            return True
        snapshots = {}
        for model in models:
            monitor = self.engine.models.get(model)
            if monitor is not None:
                snapshots[model] = snapshot_model(
                    monitor, self.actions, self._model_partition.get(model)
                )
        try:
            if isinstance(store, KafkaStore) and self.consumer.outages != self._store_outages:
                await store.ensure_topic()
                self._store_outages = self.consumer.outages
                # The broker may have lost every checkpoint: write all models, not the dirty.
                snapshots = {
                    model: snapshot_model(m, self.actions, self._model_partition.get(model))
                    for model, m in self.engine.models.items()
                }
            if snapshots:
                await store.save(snapshots)
        except Exception as err:
            self.metrics.checkpoint_failures.inc()
            log.warning(
                "checkpoint of %d models failed (offsets not committed): %r", len(snapshots), err
            )
            return False
        self._dirty -= models
        written_at = time.time()
        for model in snapshots:
            self._saved_at[model] = written_at
        self._last_checkpoint = time.monotonic()
        self.metrics.checkpoints.inc()
        self.metrics.last_checkpoint.set(time.time())
        return True

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Restore the models of newly assigned partitions before any of their records."""
        store = self.store
        if store is None or not assigned:
            return
        snapshots: dict[str, bytes] | None = None
        for attempt in range(1, 4):
            try:
                snapshots = await store.load_all()
                break
            except Exception as err:
                self.metrics.checkpoint_failures.inc()
                log.warning("loading checkpoints failed (attempt %d of 3): %r", attempt, err)
        if snapshots is None:
            log.error(
                "cannot load checkpoints: the models of %d partitions start afresh", len(assigned)
            )
            return
        now = self.clock()
        # A replica that missed a revoke (its commit raced a rebalance) may still hold models
        # of partitions now owned elsewhere: it must not act for them, nor checkpoint them
        # over their new owner's state.
        stale = [m for m, tp in self._model_partition.items() if tp not in assigned]
        for model in stale:
            self._unpublish(model)
            self.engine.drop(model)
            self._model_partition.pop(model, None)
            self._dirty.discard(model)
            self.actions.forget(model)
        if stale:
            log.warning("dropped %d models of partitions no longer assigned", len(stale))
        restored = 0
        for model, data in snapshots.items():
            header = read_header(data)
            tp = header.topic_partition
            if tp is None or tp not in assigned:
                continue
            if model in self.engine.models and self._saved_at.get(model, 0.0) >= header.saved_at:
                continue  # ours is at least as recent as the checkpoint
            try:
                monitor = restore_model(data, self.settings.policy_for(model), now, self.actions)
            except Exception as err:
                log.warning("checkpoint of model %r not restored: %r", model, err)
                continue
            if len(self.engine.models) >= self.engine.max_models:
                break
            self.engine.models[model] = monitor
            self._model_partition[model] = tp
            self._saved_at[model] = header.saved_at
            restored += 1
        self.restored_models += restored
        log.info("restored %d models from checkpoints for %d partitions", restored, len(assigned))

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Checkpoint the models of revoked partitions, then stop acting for them."""
        if self.store is None or not revoked:
            return
        leaving = {m for m, tp in self._model_partition.items() if tp in revoked}
        await self._checkpoint(leaving)
        for model in leaving:
            self._unpublish(model)
            self.engine.drop(model)
            self._model_partition.pop(model, None)
            self._dirty.discard(model)
            self.actions.forget(model)
        log.info("handed over %d models with their checkpoints", len(leaving))

    # ----------------------------------------------------------------- HTTP provider

    def batch_age(self) -> float:
        """Seconds the batch being applied has been in flight; 0 between batches."""
        started = self._batch_started_at
        return 0.0 if started is None else time.monotonic() - started

    def _batch_age_limit(self) -> float:
        # The longest a batch may legitimately take: its dead letters' retry budget, a
        # deadline for each of its other broker calls, and a margin for a busy machine.
        k = self.settings.kafka
        return k.dead_letter_retry_s + 4 * k.broker_timeout_s + 30.0

    def health_problems(self) -> list[str]:
        problems = []
        lag = self.heartbeat.current_lag()
        if lag > self.settings.http.max_loop_lag_s:
            problems.append(f"event loop stuck: heartbeat {lag:.1f}s late")
        age = self.batch_age()
        if age > self._batch_age_limit():
            problems.append(
                f"batch loop stuck: one batch in flight for {age:.0f}s, over the "
                f"{self._batch_age_limit():.0f}s any batch may take"
            )
        task = self._loop_task
        if task is not None and task.done() and not self._stop.is_set():
            problems.append("batch loop died")
        return problems

    def readiness_problems(self) -> list[str]:
        problems = []
        if self._loop_task is None:
            problems.append("starting")
        if not self.consumer.broker_reachable:
            problems.append("Kafka broker unreachable")
        failing_since = self.side_writer.failing_since
        if failing_since is not None and self._batch_started_at is not None:
            problems.append(
                f"dead letters of the batch in flight not written for "
                f"{time.monotonic() - failing_since:.0f}s (retried up to "
                f"{self.settings.kafka.dead_letter_retry_s:.0f}s): {self.side_writer.last_error}"
            )
        if not self.consumer.assignment_received:
            problems.append("no partition assignment yet")
        elif self.consumer.rejoining:
            problems.append("rejoining the consumer group: partitions revoked, none assigned yet")
        if self._stop.is_set():
            problems.append("shutting down")
        return problems

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "ready": not self.readiness_problems(),
            "applied_events": self.applied_events,
            "restored_models": self.restored_models,
            "partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in self.consumer.assignment),
            "models": self.engine.snapshot(),
            "actions": self.actions.status(),
        }


def _build_store(settings: Settings) -> CheckpointStore | None:
    state = settings.state
    if state.backend == "file":
        return DirectoryStore(Path(state.path))
    if state.backend == "kafka":
        return KafkaStore(settings.kafka, state.topic, max_bytes=state.max_bytes)
    return None
