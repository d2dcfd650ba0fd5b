"""A stopping replica adopts no work: once a stop was requested, an assignment restores no
model (called directly, and through a real rebalance while the replica is still a member),
and the replica leaves the consumer group before its actions stop, so a replica that stays
takes every partition over from the checkpoints."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker
from tests.conftest import wait_for
from tests.core.kafka_helpers import create_topic, event, produce
from tests.kafka.codec_helpers import write_config

pytestmark = pytest.mark.integration

PARTITIONS = 6
MODELS = [f"model-{i:02d}" for i in range(30)]
EVENTS = 3000


def _daemon(tmp_path: Path, name: str, broker: EmbeddedBroker, topic: str, state: Path) -> Daemon:
    home = tmp_path / name
    home.mkdir()
    config, _, _ = write_config(
        home,
        broker,
        topic,
        state={"backend": "file", "path": str(state), "interval_s": 0.5},
    )
    return Daemon(load_settings(config), metrics=Metrics.create(CollectorRegistry()))


async def _topic_with_events(broker: EmbeddedBroker, topic: str) -> set[TopicPartition]:
    await create_topic(broker.bootstrap_servers, topic, partitions=PARTITIONS)
    await produce(
        broker.bootstrap_servers, topic, [event(MODELS[i % len(MODELS)], i) for i in range(EVENTS)]
    )
    return {TopicPartition(topic, p) for p in range(PARTITIONS)}


async def _run_to_checkpoint(daemon: Daemon) -> None:
    """Run ``daemon`` alone until it applied every event, then stop it (it checkpoints)."""
    task = asyncio.create_task(daemon.run())
    try:
        await wait_for(lambda: daemon.applied_events >= EVENTS, timeout=60, what="all events")
    finally:
        daemon.request_stop("test")
        assert await asyncio.wait_for(task, 30) == 0


async def test_assignment_after_stop_request_restores_nothing(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    topic = f"stopping-{unique}"
    tps = await _topic_with_events(broker, topic)
    state = tmp_path / "state"
    await _run_to_checkpoint(_daemon(tmp_path, "first", broker, topic, state))

    # Control: a replica that is not stopping restores every model of its partitions.
    staying = _daemon(tmp_path, "staying", broker, topic, state)
    assert staying.store is not None
    await staying.store.start()
    await staying.consumer._on_assigned(set(tps))
    assert staying.restored_models == len(MODELS)
    assert sorted(staying.engine.models) == MODELS

    stopping = _daemon(tmp_path, "stopping", broker, topic, state)
    assert stopping.store is not None
    await stopping.store.start()
    stopping.request_stop("test")
    await stopping.consumer._on_assigned(set(tps))
    assert stopping.restored_models == 0
    assert stopping.engine.models == {}
    assert stopping.actions.status()["recent"] == []
    assert (
        stopping.metrics.registry.get_sample_value("driftwarden_health_level", {"model": MODELS[0]})
        is None
    )


async def test_stopping_replica_leaves_the_group_before_its_actions_stop(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"leaving-{unique}"
    tps = await _topic_with_events(broker, topic)
    state = tmp_path / "state"
    staying = _daemon(tmp_path, "staying", broker, topic, state)
    leaving = _daemon(tmp_path, "leaving", broker, topic, state)
    tasks = [asyncio.create_task(d.run()) for d in (staying, leaving)]
    try:
        await wait_for(
            lambda: (
                bool(staying.consumer.assignment)
                and bool(leaving.consumer.assignment)
                and staying.consumer.assignment | leaving.consumer.assignment == tps
                and staying.applied_events + leaving.applied_events >= EVENTS
            ),
            timeout=90,
            what=lambda: (
                f"both replicas assigned and every event applied: "
                f"{staying.consumer.assignment} {leaving.consumer.assignment}"
            ),
        )
        # Hold the leaving replica in its action flush: the point where it must no longer
        # be a member of the group.
        flushing, release = asyncio.Event(), asyncio.Event()
        actions_stop = leaving.actions.stop

        async def held_stop(flush_timeout_s: float) -> None:
            flushing.set()
            await release.wait()
            await actions_stop(flush_timeout_s)

        monkeypatch.setattr(leaving.actions, "stop", held_stop)
        restored = leaving.restored_models
        leaving.request_stop("test: rolling restart")
        await wait_for(flushing.is_set, timeout=30, what="the leaving replica flushing actions")
        took_over_s = await wait_for(
            lambda: staying.consumer.assignment == tps and not staying.consumer.rejoining,
            timeout=40,
            what=lambda: (
                f"the staying replica owning every partition: {staying.consumer.assignment}"
            ),
        )
        assert not tasks[1].done(), "the leaving replica is still flushing its actions"
        assert leaving.restored_models == restored
        assert sorted(staying.engine.models) == MODELS
        print(
            f"\nstaying replica owned all {PARTITIONS} partitions {took_over_s:.2f}s into the flush"
        )
        release.set()
        assert await asyncio.wait_for(tasks[1], 30) == 0
    finally:
        for daemon in (staying, leaving):
            daemon.request_stop("test")
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    assert results == [0, 0]


async def test_rebalance_while_stopping_adopts_no_partition(
    broker: EmbeddedBroker,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The final stop of a rolling restart (issue 13, item 9): the last replica is stopping
    and still a member when the other one leaves; the rebalance that follows hands it every
    partition, and it must restore none of their models."""
    caplog.set_level(logging.INFO, logger="monitor")
    topic = f"final-{unique}"
    tps = await _topic_with_events(broker, topic)
    state = tmp_path / "state"
    first = _daemon(tmp_path, "first", broker, topic, state)
    last = _daemon(tmp_path, "last", broker, topic, state)
    tasks = [asyncio.create_task(d.run()) for d in (first, last)]
    release = asyncio.Event()
    try:
        await wait_for(
            lambda: (
                bool(first.consumer.assignment)
                and bool(last.consumer.assignment)
                and first.consumer.assignment | last.consumer.assignment == tps
                and first.applied_events + last.applied_events >= EVENTS
            ),
            timeout=90,
            what="both replicas assigned and every event applied",
        )
        # Hold the last replica's final fetch: it is stopping and still a group member, and
        # holds no lock, so a rebalance runs to its end there.
        fetching = asyncio.Event()
        fetch = last.consumer.fetch

        async def held_fetch() -> Any:
            if not release.is_set():
                fetching.set()
                await release.wait()
                return {}
            return await fetch()

        monkeypatch.setattr(last.consumer, "fetch", held_fetch)
        await wait_for(fetching.is_set, timeout=30, what="the last replica's held fetch")
        restored = last.restored_models
        last.request_stop("test: final stop")
        first.request_stop("test: first stop")
        assert await asyncio.wait_for(tasks[0], 30) == 0
        adopted_s = await wait_for(
            lambda: last.consumer.assignment == tps and not last.consumer.rejoining,
            timeout=40,
            what=lambda: f"the rebalance handing the last replica {last.consumer.assignment}",
        )
        assert last.restored_models == restored
        assert last.engine.models == {}
        release.set()
        assert await asyncio.wait_for(tasks[1], 60) == 0
    finally:
        release.set()
        for daemon in (first, last):
            daemon.request_stop("test")
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    adopted = [r.getMessage() for r in caplog.records if "adopting no models" in r.getMessage()]
    print(
        f"\nlast replica assigned all {PARTITIONS} partitions {adopted_s:.2f}s after the first "
        f"left; restored {last.restored_models - restored} models; {adopted}"
    )
    assert adopted == [f"stopping: adopting no models for {PARTITIONS} assigned partitions"]
    assert last.restored_models == restored
    assert last.engine.models == {}
    assert last.actions.status()["recent"] == []
