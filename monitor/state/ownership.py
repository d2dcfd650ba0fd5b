"""Checkpoint ownership: which models this replica owns and from which partition, what each
model's state holds (its applied offsets), which checkpoints are due or failing; saving them
before a commit, restoring them on assign, saving and releasing them on revoke.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiokafka.structs import TopicPartition

from monitor.failpoints import failpoint
from monitor.state.checkpoints import (
    CheckpointError,
    CheckpointHealth,
    CheckpointStore,
    KafkaStore,
    read_header,
    restore_model,
    snapshot_model,
)

if TYPE_CHECKING:
    from monitor.actions.actions import Actions
    from monitor.config.settings import Settings
    from monitor.engine.engine import Engine
    from monitor.observability.metrics import Metrics

__all__ = ["CheckpointOwner", "Committer", "OwnedModels"]

log = logging.getLogger(__name__)


class Committer(Protocol):
    """What checkpoint ownership needs of the consumer."""

    @property
    def batch_lock(self) -> asyncio.Lock: ...

    @property
    def outages(self) -> int: ...

    async def commit(self) -> bool: ...


@dataclass(slots=True)
class OwnedModels:
    """The bookkeeping of the models this replica owns (no I/O)."""

    #: Partition each model's events come from: its checkpoint follows that partition.
    partition: dict[str, TopicPartition] = field(default_factory=dict)
    #: Per model, per partition: the offset of the last record its state holds. It goes
    #: into the model's checkpoint, so a model can be checkpointed mid-batch (at its
    #: transition, before any action) and a replay after a crash re-applies nothing the
    #: checkpoint already holds: the transition is not decided (nor acted on) twice.
    applied_offsets: dict[str, dict[TopicPartition, int]] = field(default_factory=dict)
    #: Models whose state changed since their last checkpoint.
    dirty: set[str] = field(default_factory=set)
    #: When each model's state was last written to (or read from) the store.
    saved_at: dict[str, float] = field(default_factory=dict)
    #: After a restore: per partition, per model, records at or below this offset are
    #: skipped (the restored state already holds them). Emptied once passed.
    replay_skip: dict[TopicPartition, dict[str, int]] = field(default_factory=dict)

    def applied(self, model: str, offsets: dict[TopicPartition, int]) -> None:
        """``model``'s state now holds its records up to ``offsets`` (its last partition
        first in line: the one its checkpoint follows)."""
        self.partition[model] = next(reversed(offsets))
        self.applied_offsets.setdefault(model, {}).update(offsets)

    def of_partitions(self, partitions: set[TopicPartition]) -> set[str]:
        return {model for model, tp in self.partition.items() if tp in partitions}

    def not_of_partitions(self, partitions: set[TopicPartition]) -> list[str]:
        return [model for model, tp in self.partition.items() if tp not in partitions]

    def adopt(
        self, model: str, tp: TopicPartition, saved_at: float, offsets: dict[TopicPartition, int]
    ) -> None:
        """``model`` restored from its checkpoint (of ``tp``, saved at ``saved_at``)."""
        self.partition[model] = tp
        self.saved_at[model] = saved_at
        self.applied_offsets[model] = offsets
        for part, offset in offsets.items():
            self.replay_skip.setdefault(part, {})[model] = offset

    def release(self, model: str) -> None:
        """``model`` handed over (its checkpoint is its new owner's)."""
        self.partition.pop(model, None)
        self.applied_offsets.pop(model, None)
        self.dirty.discard(model)


class CheckpointOwner:
    """Checkpoints of the models this replica owns, in a store (None: no checkpoints, every
    commit is immediate), and their hand-over on a rebalance."""

    def __init__(
        self,
        settings: Settings,
        store: CheckpointStore | None,
        engine: Engine,
        actions: Actions,
        metrics: Metrics,
        consumer: Committer,
        *,
        clock: Callable[[], float],
        stopping: Callable[[], bool],
        on_release: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.actions = actions
        self.metrics = metrics
        self.consumer = consumer
        self.clock = clock
        #: Whether the daemon is stopping (a stopping replica adopts no models).
        self.stopping = stopping
        #: Called for each model this replica stops acting for (its series, its actions).
        self.on_release = on_release
        self.owned = OwnedModels()
        self.health = CheckpointHealth(settings.state.max_failed_rounds)
        self.restored_models = 0
        #: Set by a transition or an acknowledgement: checkpoint and commit at the next
        #: commit point instead of waiting for the interval.
        self.force = False
        self._last_checkpoint = time.monotonic()
        self._store_outages = 0
        if store is not None:
            actions.persist = self.persist
            actions.on_state_changed = self.mark_dirty

    # ----------------------------------------------------------------- saving

    async def commit_point(self) -> None:
        """Commit applied offsets; with a state store, only right after a checkpoint."""
        if self.store is None:
            await self.consumer.commit()
            return
        due = time.monotonic() - self._last_checkpoint >= self.settings.state.interval_s
        if not (due or self.force):
            return
        if await self.checkpoint(set(self.owned.dirty)):
            self.force = False
            failpoint("commit.before")
            await self.consumer.commit()
            failpoint("commit.after")

    def _snapshot(self, model: str) -> bytes | None:
        monitor = self.engine.models.get(model)
        if monitor is None:
            return None
        owned = self.owned
        return snapshot_model(
            monitor, self.actions, owned.partition.get(model), owned.applied_offsets.get(model)
        )

    async def checkpoint(self, models: set[str]) -> bool:
        """Save ``models``; False when the offsets must not be committed yet."""
        store = self.store
        if store is None:
            return True
        snapshots = {}
        for model in models:
            data = self._snapshot(model)
            if data is not None:
                snapshots[model] = data
        refused: dict[str, str] = {}
        try:
            if isinstance(store, KafkaStore) and self.consumer.outages != self._store_outages:
                await store.ensure_topic()
                self._store_outages = self.consumer.outages
                # The broker may have lost every checkpoint: write all models, not the dirty.
                snapshots = {}
                for model in self.engine.models:
                    data = self._snapshot(model)
                    if data is not None:
                        snapshots[model] = data
            if snapshots:
                failpoint("checkpoint.before_save")
                await store.save(snapshots)
                failpoint("checkpoint.saved")
        except CheckpointError as err:
            if not err.failed:
                return self._store_failed(err, len(snapshots))
            refused = err.failed
        except Exception as err:
            return self._store_failed(err, len(snapshots))
        written_at = time.time()
        for model in snapshots:
            if model not in refused:
                self.owned.saved_at[model] = written_at
        self.owned.dirty -= models - refused.keys()
        self.health.written(set(snapshots) - refused.keys())
        self._last_checkpoint = time.monotonic()
        if refused:
            self.metrics.checkpoint_failures.inc()
            blocking = self.health.refused(refused)
            self.metrics.checkpoint_failing_models.set(len(self.health.failing))
            if blocking:
                log.warning(
                    "checkpoint of %d of %d models refused (offsets not committed yet): %s",
                    len(refused),
                    len(snapshots),
                    next(iter(refused.values())),
                )
                return False
            log.error(
                "checkpoint of %d models refused %d rounds in a row (first: %r, %s): offsets are "
                "committed without them; a crash restarts them from their last good checkpoint",
                len(refused),
                self.settings.state.max_failed_rounds,
                next(iter(refused)),
                next(iter(refused.values())),
            )
        self.metrics.checkpoint_failing_models.set(len(self.health.failing))
        self.metrics.checkpoints.inc()
        self.metrics.last_checkpoint.set(written_at)
        return True

    def _store_failed(self, err: Exception, count: int) -> bool:
        self.metrics.checkpoint_failures.inc()
        self.health.store_failed(repr(err))
        log.warning("checkpoint of %d models failed (offsets not committed): %r", count, err)
        return False

    async def persist(self, model: str) -> None:
        """Checkpoint ``model`` now (the flag worker, before a flag write): at a point where
        its state matches its offsets, never in the middle of a batch's other models."""
        async with self.consumer.batch_lock:
            if model in self.engine.models and not await self.checkpoint({model}):
                raise RuntimeError(f"checkpoint of {model!r} failed")

    def mark_dirty(self, model: str) -> None:
        # An acknowledgement (a notification delivered, a flag written) is checkpointed at
        # the next commit point, not the next interval: that keeps the window in which a
        # crash re-sends a delivered notification (same idempotency key) to about one batch.
        if model in self.engine.models:
            self.owned.dirty.add(model)
            self.force = True

    # ----------------------------------------------------------------- dropping

    async def forget(self, models: list[str]) -> None:
        """Drop the bookkeeping and the checkpoints of models this replica stops watching
        for good (idle past the TTL, or evicted for a newcomer)."""
        owned = self.owned
        for model in models:
            owned.release(model)
            owned.saved_at.pop(model, None)
            self.health.failing.pop(model, None)
        if self.store is not None:
            try:
                await self.store.delete(models)
            except Exception as err:
                log.warning("cannot delete checkpoints of dropped models: %r", err)

    def _hand_over(self, model: str) -> None:
        self.on_release(model)
        self.owned.release(model)
        self.health.failing.pop(model, None)
        self.actions.forget(model)

    # ----------------------------------------------------------------- rebalance hooks

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Restore the models of newly assigned partitions before any of their records."""
        if self.stopping():
            # A stopping replica cannot act for what it would adopt (its batch loop has
            # ended, its actions stop next): the partitions go to a replica that stays,
            # from their checkpoints, once this one has left the group.
            log.info("stopping: adopting no models for %d assigned partitions", len(assigned))
            return
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
        failpoint("restore.loaded")
        now = self.clock()
        owned = self.owned
        # A replica that missed a revoke (its commit raced a rebalance) may still hold models
        # of partitions now owned elsewhere: it must not act for them, nor checkpoint them
        # over their new owner's state.
        stale = owned.not_of_partitions(assigned)
        for model in stale:
            self._hand_over(model)
        if stale:
            log.warning("dropped %d models of partitions no longer assigned", len(stale))
        restored = 0
        for model, data in snapshots.items():
            header = read_header(data)
            tp = header.topic_partition
            if tp is None or tp not in assigned:
                continue
            if model in self.engine.models and owned.saved_at.get(model, 0.0) >= header.saved_at:
                continue  # ours is at least as recent as the checkpoint
            try:
                monitor = restore_model(data, self.settings.policy_for(model), now, self.actions)
            except Exception as err:
                log.warning("checkpoint of model %r not restored: %r", model, err)
                continue
            if not self.engine.adopt(model, monitor):
                continue  # max_models reached; a named model is always adopted
            owned.adopt(model, tp, header.saved_at, header.applied_offsets())
            # What the checkpoint decided and did not see done is carried out now, once.
            self.actions.resume(model)
            restored += 1
        failpoint("restore.resumed")
        self.restored_models += restored
        log.info("restored %d models from checkpoints for %d partitions", restored, len(assigned))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Checkpoint the models of revoked partitions, then stop acting for them."""
        if self.store is None or not revoked:
            return
        leaving = self.owned.of_partitions(revoked)
        for tp in revoked:
            self.owned.replay_skip.pop(tp, None)
        await self.checkpoint(leaving)
        for model in leaving:
            self._hand_over(model)
        log.info("handed over %d models with their checkpoints", len(leaving))
