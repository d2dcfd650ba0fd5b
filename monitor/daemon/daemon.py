"""The daemon's lifecycle: composes its components in an AsyncExitStack, runs the batch loop
and the health tick, and shuts down in order (stop fetching, finish the batch, commit, leave
the group, flush actions, stop the rest in reverse start order).

What one batch does is ``monitor.daemon.batches``; checkpoints and the hand-over of models,
``monitor.state.ownership``; the per-model series, ``monitor.observability.publisher``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiokafka.structs import TopicPartition

from monitor import __version__
from monitor.actions.actions import Actions
from monitor.config.settings import Settings
from monitor.daemon.batches import BatchApplier, DeadLetters
from monitor.daemon.runtime import HeapTrimmer, tuned_runtime
from monitor.engine.engine import Engine
from monitor.engine.events import EventDecoder
from monitor.errors import BrokerUnavailableError
from monitor.http.server import HttpServer, LoopHeartbeat
from monitor.http.status_page import add_routes as add_status_page
from monitor.kafka.backoff import Backoff
from monitor.kafka.consumer import EventConsumer
from monitor.kafka.quirks import ConnectErrorsMuted
from monitor.kafka.side_topics import SideTopicWriter
from monitor.kafka.topics import ensure_topics
from monitor.observability.history import history_of
from monitor.observability.metrics import Metrics
from monitor.observability.model_status import ModelStatus, status_json
from monitor.observability.publisher import SeriesPublisher
from monitor.state.checkpoints import (
    CheckpointStore,
    DirectoryStore,
    KafkaStore,
)
from monitor.state.ownership import CheckpointOwner

__all__ = ["HANDLED_SIGNALS", "Daemon"]


log = logging.getLogger(__name__)

#: SIGTERM is how Kubernetes asks a pod to stop; SIGINT is Ctrl-C. The first asks for a
#: graceful stop; a second one forces it.
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Retries of a broker that cannot be reached at start: 1 s doubling to 30 s, jittered.
BROKER_START_RETRY = Backoff(first_s=1.0, max_s=30.0, jitter=0.2)
#: Past this with no broker the daemon exits 1 (the orchestrator restarts it and shows why).
BROKER_START_TIMEOUT_S = 300.0


class Daemon:
    """One replica: its components, their start and ordered stop, the loops that drive them."""

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
        self.engine = Engine.for_settings(settings, may_evict=self._may_evict)
        self.decoder = EventDecoder(settings.kafka.max_record_bytes)
        self.consumer = EventConsumer(
            settings.kafka,
            self.metrics,
            on_assigned=self._on_assigned,
            on_revoked=self._on_revoked,
        )
        self.side_writer = SideTopicWriter(settings.kafka, self.metrics)
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
        #: The health tick runs until the batch loop has ended.
        self._ticking = True
        self._tick_task: asyncio.Task[None] | None = None
        #: Free heap pages go back to the system every few seconds of the tick (RSS is what
        #: a container's memory limit counts).
        self.heap = HeapTrimmer()
        #: Loop time by which the components still running after the ordered shutdown (or a
        #: failed start) must have stopped; set when they start stopping.
        self._components_deadline: float | None = None
        self.broker_retry = BROKER_START_RETRY
        self.broker_start_timeout_s = max(
            BROKER_START_TIMEOUT_S, settings.kafka.broker_timeout_s * 3
        )
        self._loop_task: asyncio.Task[None] | None = None
        self._started_at = time.monotonic()
        self._last_batch_at: float | None = None
        #: When the batch being applied was taken (None between batches).
        self._batch_started_at: float | None = None
        self.metrics.batch_in_flight.set_function(self.batch_age)
        self.publisher = SeriesPublisher(self.metrics, self.engine.models)
        #: The models' /status JSON, kept per model (rebuilt for those that changed).
        self.model_status = ModelStatus(self.engine.models)
        self.store = _build_store(settings)
        self.ownership = CheckpointOwner(
            settings,
            self.store,
            self.engine,
            self.actions,
            self.metrics,
            self.consumer,
            clock=clock,
            stopping=self._stop.is_set,
            on_release=self._release,
        )
        self.batches = BatchApplier(
            self.engine,
            self.decoder,
            self.actions,
            self.ownership,
            self.publisher,
            DeadLetters(self.side_writer, self.metrics, stopping=self._stop.is_set),
            self.metrics,
            clock=clock,
            forget_models=self._forget_models,
            applied_log=settings.engine.applied_log,
        )

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
        grace = self.settings.lifecycle.grace_period_s
        self._components_deadline = None
        # Each component is entered once started: a failed start unwinds what had started,
        # in reverse order, and so does the end of the ordered shutdown below.
        async with contextlib.AsyncExitStack() as components:
            try:
                await self._start_components(components)
            except (BrokerUnavailableError, _StoreUnavailableError) as err:
                log.error("%s", err)
                return 1
            exit_code = await self._serve()
            started = time.monotonic()
            await self._shut_down(started, grace)
            # What is left (the store, the dead-letter writer, the HTTP server, the heartbeat)
            # stops as the stack unwinds, the Kafka clients within what remains of the grace.
            self._components_deadline = asyncio.get_running_loop().time() + max(
                0.1, grace - (time.monotonic() - started)
            )
        self.batches.close()
        log.info("shutdown complete in %.2fs", time.monotonic() - started)
        return exit_code

    async def _start_components(self, components: contextlib.AsyncExitStack) -> None:
        """Start every component in order, each entered in ``components`` once started."""
        await self.heartbeat.start()
        components.push_async_callback(self.heartbeat.stop)
        # Before the HTTP server: the operator API takes pins and silences from then on, while
        # Kafka may still be starting, and each must reach the audit file.
        self.actions.audit.open()
        components.callback(self.actions.audit.close)
        await self.http.start()
        components.push_async_callback(self.http.stop)
        await self._start_kafka(components)
        if self.store is not None:
            try:
                await self.store.start()
            except Exception as err:
                raise _StoreUnavailableError(f"checkpoint store unavailable: {err!r}") from err
            components.push_async_callback(self._within_grace(self.store.stop))
        await self.actions.start()
        components.push_async_callback(self._stop_actions)

    async def _serve(self) -> int:
        """Run the health tick and the batch loop until the loop ends; its exit code."""
        self._tick_task = asyncio.create_task(self._tick_loop(), name="health-tick")
        self._loop_task = asyncio.create_task(self._batch_loop(), name="batch-loop")
        try:
            await self._loop_task
        except asyncio.CancelledError:
            log.warning("batch loop cancelled (forced stop)")
            return 1
        except Exception:
            log.exception("batch loop died")
            return 1
        return 0

    async def _shut_down(self, started: float, grace: float) -> None:
        """The ordered part of the shutdown: stop the tick, checkpoint and commit, leave the
        group, flush the actions and record what the flush confirmed."""
        s = self.settings
        self._ticking = False
        tick = self._tick_task
        if tick is not None:
            tick.cancel()
            # Bounded: Python 3.11's wait_for can lose a cancellation that lands as its inner
            # call (a broker lookup of the tick) completes; the flag above ends the loop then.
            done, _ = await asyncio.wait([tick], timeout=max(2.0, s.kafka.broker_timeout_s))
            if not done:
                log.warning("health tick did not stop in time; shutting down without it")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, grace - 1.0)):
                log.info("shutdown: checkpointing and committing offsets")
                async with self.consumer.batch_lock:
                    self.ownership.force = True
                    await self.ownership.commit_point()
        # Leave the group before the actions stop: a rebalance while this replica is still
        # a member would hand it partitions it can no longer act for (_on_assigned adopts
        # none once stopping), and keeps them from a replica that stays.
        log.info("shutdown: leaving the consumer group")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, grace - (time.monotonic() - started) - 1)):
                await self.consumer.stop()
        log.info("shutdown: flushing actions")
        await self.actions.stop(flush_timeout_s=max(0.1, grace - (time.monotonic() - started) - 1))
        if self.store is not None and self.ownership.owned.dirty:
            # The flush confirmed deliveries and flag writes: record them, or the next start
            # would send those notifications again (same idempotency key, but Slack has none).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.1, grace - (time.monotonic() - started) - 0.5)):
                    await self.ownership.checkpoint(set(self.ownership.owned.dirty))

    async def _stop_actions(self) -> None:
        # After the ordered shutdown a no-op (Actions.stop is idempotent); after a failed
        # start of a later component, a flush within the grace period.
        await self.actions.stop(flush_timeout_s=max(0.1, self._components_left_s()))

    def _components_left_s(self) -> float:
        loop = asyncio.get_running_loop()
        if self._components_deadline is None:
            # Unwinding after a failed start: the whole grace period from now on.
            self._components_deadline = loop.time() + self.settings.lifecycle.grace_period_s
        return self._components_deadline - loop.time()

    def _within_grace(self, stop: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """``stop`` bounded by the components' shutdown deadline: a broker that is gone must
        not hold the exit past the grace period (each client also has its own deadline)."""

        async def bounded() -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self._components_left_s())):
                    await stop()

        return bounded

    async def _start_kafka(self, components: contextlib.AsyncExitStack) -> None:
        s = self.settings.kafka
        # One view of the broker: a failed dead-letter write also fails /readyz.
        self.side_writer.broker = self.consumer
        started = time.monotonic()
        deadline = started + self.broker_start_timeout_s
        delays = self.broker_retry.delays()
        side_writer_entered = False
        # aiokafka logs an ERROR of its own for every refused connection; the one line per
        # attempt below carries its reason instead.
        quiet = ConnectErrorsMuted()
        aiokafka_log = logging.getLogger("aiokafka")
        aiokafka_log.addFilter(quiet)
        try:
            for attempt in itertools.count(1):
                try:
                    if s.create_topics:
                        await ensure_topics(
                            s,
                            {
                                s.dead_letter_topic: {"partitions": 1},
                                s.review_topic: {"partitions": 1},
                            },
                            s.broker_timeout_s,
                        )
                    await self.side_writer.start()
                    if not side_writer_entered:
                        components.push_async_callback(self._within_grace(self.side_writer.stop))
                        side_writer_entered = True
                    await self.consumer.start()
                    components.push_async_callback(self._within_grace(self.consumer.stop))
                    if attempt > 1:
                        log.info(
                            "Kafka reachable at %s after %d attempts", s.bootstrap_servers, attempt
                        )
                    return
                except Exception as err:  # any start-up failure is retried until the deadline
                    delay = next(delays)
                    reason = quiet.take() or repr(err)
                    waited = time.monotonic() - started
                    if self._stop.is_set() or time.monotonic() + delay > deadline:
                        why = "stopped" if self._stop.is_set() else "giving up"
                        raise BrokerUnavailableError(
                            f"Kafka unavailable at {s.bootstrap_servers} ({why} after "
                            f"{attempt} attempts in {waited:.0f}s): {reason}"
                        ) from err
                    log.warning(
                        "Kafka not reachable at %s (attempt %d: %s); retrying in %.1fs",
                        s.bootstrap_servers,
                        attempt,
                        reason,
                        delay,
                    )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._stop.wait()
                    if self._stop.is_set():
                        raise BrokerUnavailableError(
                            f"Kafka unavailable at {s.bootstrap_servers} (stopped after "
                            f"{attempt} attempts in {time.monotonic() - started:.0f}s): {reason}"
                        ) from err
        except BaseException:
            # The consumer's failed start leaves its outage log attached (it holds back
            # aiokafka's errors until the broker is back): a consumer never started stops
            # nothing else.
            await self.consumer.stop()
            raise
        finally:
            aiokafka_log.removeFilter(quiet)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

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
                    applied = await self.batches.apply(batch)
                    if applied:
                        self.consumer.mark_applied(batch)
                        await self.ownership.commit_point()
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

    async def _tick_loop(self) -> None:
        while self._ticking:
            await asyncio.sleep(1.0)
            async with self.consumer.batch_lock:
                now = self.clock()
                transitions = self.engine.tick(now)
                self.batches.record_coverage()  # discovery may end on the clock
                if transitions:
                    await self.batches.on_transitions(transitions, now, None)
                self.actions.tick(now)
                await self._expire_idle_models(now)
                if self.store is not None and self.consumer.assignment:
                    await self.ownership.commit_point()
                # Only the models evaluated since the last tick (by a batch or by this one)
                # can show anything new: the others' series and samples stay as they are.
                moved = self.engine.take_moved()
                self.publisher.publish_tick(self.engine.ticked, moved)
                self.metrics.models_active.set(len(self.engine.models))
                history_of(self).record(self.engine.models, now, moved)  # for the status page
            self.heap.maybe(time.monotonic())
            # Lag of every assigned partition, also one that has applied nothing yet (outside
            # the batch lock: a position lookup waits on the broker).
            await self.consumer.track_unapplied_partitions()

    def _add_routes(self, app: web.Application) -> None:
        from monitor.http.operator import add_operator_routes
        from monitor.http.rollout_gate import add_gate_routes

        add_gate_routes(app, self.engine)
        add_operator_routes(app, self.actions, engine=self.engine, policies=self.settings.models)
        add_status_page(app, self)

    # ----------------------------------------------------------------- models leaving

    async def _expire_idle_models(self, now: float) -> None:
        ttl = self.settings.engine.model_idle_ttl_s
        idle = [
            model
            for model, monitor in self.engine.models.items()
            if monitor.last_event_at is not None and now - monitor.last_event_at > ttl
        ]
        if idle:
            await self._forget_models(idle, f"idle for over {ttl:.0f}s")

    async def _forget_models(self, models: list[str], why: str) -> None:
        """Drop models this replica stops watching for good (idle past the TTL, or evicted
        for a newcomer): their monitors, series and checkpoints."""
        for model in models:
            self.publisher.unpublish(model, counters=True)
            self.engine.drop(model)
        log.info("dropped %d models: %s", len(models), why)
        await self.ownership.forget(models)

    def _release(self, model: str) -> None:
        """Stop showing and watching ``model``: its partition is handed over (its counters
        stay: the model is still watched, elsewhere)."""
        self.publisher.unpublish(model)
        self.engine.drop(model)

    def _may_evict(self, model: str) -> bool:
        """Whether ``model`` may make room for a new one: no flag held, no open incident
        (the engine checks its health); otherwise it would be dropped silently."""
        if self.actions.held.get(model):
            return False
        dispatcher = self.actions.dispatcher
        return dispatcher is None or all(a.model != model for a in dispatcher.active())

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.ownership.on_assigned(assigned)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.ownership.on_revoked(revoked)

    # ----------------------------------------------------------------- HTTP provider

    @property
    def applied_events(self) -> int:
        """Events that reached a detector since the start."""
        return self.batches.applied_events

    @property
    def restored_models(self) -> int:
        """How many models this replica restored from checkpoints since it started."""
        return self.ownership.restored_models

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
        problems += self.consumer.unreadable_problems()
        if self._stop.is_set():
            problems.append("shutting down")
        problems.extend(self.ownership.health.problems())
        return problems

    def _status_head(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "ready": not self.readiness_problems(),
            "applied_events": self.batches.applied_events,
            "refused_events": {r.value: n for r, n in self.engine.refused_events.items()},
            "restored_models": self.ownership.restored_models,
            "checkpoints": self.ownership.health.status(),
            "partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in self.consumer.assignment),
            "unreadable_partitions": self.consumer.unreadable_problems(),
        }

    def status(self) -> dict[str, Any]:
        """/status as a dict of its own (callers may change it: the demo adds to it)."""
        return {
            **self._status_head(),
            "models": self.engine.snapshot(),
            "actions": self.actions.status(),
        }

    def status_json(self) -> str:
        """/status as served: ``status()`` encoded, each model from its kept text (rebuilt
        only for the models that changed since the last request)."""
        return status_json(
            self._status_head(), self.model_status, {"actions": self.actions.status()}
        )


class _StoreUnavailableError(RuntimeError):
    """The checkpoint store did not start: the daemon exits 1 rather than run without it."""


def _build_store(settings: Settings) -> CheckpointStore | None:
    state = settings.state
    if state.backend == "file":
        return DirectoryStore(Path(state.path))
    if state.backend == "kafka":
        return KafkaStore(settings.kafka, state.topic, max_bytes=state.max_bytes)
    return None
