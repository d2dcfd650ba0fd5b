"""Checkpoints of every model's detector, health and action state, so a restart or a
rebalance neither forgets reference windows nor repeats a flag flip or a page.

Stores: a compacted Kafka topic keyed by model id (replicas), or a directory (one instance).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from aiokafka.structs import TopicPartition

from alerts.base import Alert
from detectors.base import Detector
from detectors.registry import restore_detector
from detectors.serialization import StateError, pack, unpack
from monitor.config.policy import Level, ModelPolicy
from monitor.engine.discovery import ObservedSchema
from monitor.engine.engine import ModelMonitor
from monitor.errors import DriftwardenError
from monitor.kafka.quirks import read_end

if TYPE_CHECKING:
    from monitor.actions.actions import Actions
    from monitor.actions.effects import Effects
    from monitor.config.settings import KafkaSettings

__all__ = [
    "CheckpointError",
    "CheckpointHealth",
    "CheckpointStore",
    "DirectoryStore",
    "KafkaStore",
    "restore_model",
    "snapshot_model",
]

log = logging.getLogger(__name__)

STATE_VERSION = 1


class CheckpointError(DriftwardenError):
    """Checkpoints not written. ``failed`` names the models the store refused for a reason
    of their own (a checkpoint too large, say), with why: the other models of the call were
    written. Empty when the store as a whole failed (nothing was written).
    """

    retriable = True

    def __init__(self, message: str, failed: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.failed: dict[str, str] = failed if failed is not None else {}


class CheckpointStore(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def load_all(self) -> dict[str, bytes]:
        """Every model's latest checkpoint."""
        ...

    async def save(self, items: dict[str, bytes]) -> None:
        """Write checkpoints durably; return only once they are safe. Raise CheckpointError
        whose ``failed`` names the models not written (the others are safe)."""
        ...

    async def delete(self, models: list[str]) -> None:
        """Forget models (tombstones on a compacted topic)."""
        ...


class CheckpointHealth:
    """Which checkpoints keep failing, so that one model's failure cannot stop every other
    model's offset commits for ever, and a failing store shows on /readyz.

    A model the store refuses for a reason of its own holds back commits for at most
    ``max_failed_rounds`` rounds in a row (a transient error heals in that time); after that
    it is still retried each round but no longer blocks. A store that fails as a whole always
    blocks commits (at-least-once: a crash must replay from a state that matches the offset).

    >>> h = CheckpointHealth(max_failed_rounds=2)
    >>> h.refused({"big": "MessageSizeTooLargeError"}), h.refused({"big": "..."})
    (True, False)
    >>> h.problems()
    ["checkpoint of 1 models refused 2+ rounds in a row, e.g. 'big': ..."]
    >>> h.written({"big"}); h.problems()
    []
    """

    def __init__(self, max_failed_rounds: int) -> None:
        self.max_failed_rounds = max_failed_rounds
        #: Model -> (consecutive refused rounds, last reason).
        self.failing: dict[str, tuple[int, str]] = {}
        self.store_failures = 0
        self.store_error = ""

    def written(self, models: set[str]) -> None:
        self.store_failures = 0
        for model in models:
            self.failing.pop(model, None)

    def refused(self, refused: dict[str, str]) -> bool:
        """Count a round in which these models were refused; True while any still blocks."""
        self.store_failures = 0
        blocking = False
        for model, reason in refused.items():
            rounds = self.failing.get(model, (0, ""))[0] + 1
            self.failing[model] = (rounds, reason)
            blocking |= rounds < self.max_failed_rounds
        return blocking

    def store_failed(self, reason: str) -> None:
        self.store_failures += 1
        self.store_error = reason

    def problems(self) -> list[str]:
        problems = []
        if self.store_failures >= self.max_failed_rounds:
            problems.append(
                f"checkpoint store failing: {self.store_failures} rounds in a row, "
                f"offsets not committed: {self.store_error}"
            )
        stuck = [m for m, (rounds, _) in self.failing.items() if rounds >= self.max_failed_rounds]
        if stuck:
            reason = self.failing[stuck[0]][1]
            problems.append(
                f"checkpoint of {len(stuck)} models refused {self.max_failed_rounds}+ rounds "
                f"in a row, e.g. {stuck[0][:100]!r}: {reason}"
            )
        return problems

    def status(self) -> dict[str, Any]:
        return {
            "store_failed_rounds": self.store_failures,
            "store_error": self.store_error or None,
            "failing_models": {
                model[:200]: {"rounds": rounds, "reason": reason}
                for model, (rounds, reason) in list(self.failing.items())[:100]
            },
        }


def _spec_digest(spec: Any) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


def _alert_to_dict(alert: Alert) -> dict[str, Any]:
    return {
        "model": alert.model,
        "alertname": alert.alertname,
        "severity": alert.severity,
        "state": alert.state,
        "signals": list(alert.signals),
        "summary": alert.summary,
        "description": alert.description,
        "runbook_url": alert.runbook_url,
        "starts_at": alert.starts_at.isoformat(),
        "values": alert.values,
        "labels": alert.labels,
    }


def _alert_from_dict(raw: dict[str, Any]) -> Alert:
    return Alert(
        model=raw["model"],
        alertname=raw["alertname"],
        severity=raw["severity"],
        state=raw["state"],
        signals=tuple(raw["signals"]),
        summary=raw["summary"],
        description=raw["description"],
        runbook_url=raw["runbook_url"],
        starts_at=datetime.fromisoformat(raw["starts_at"]),
        values=dict(raw["values"]),
        labels=dict(raw["labels"]),
    )


def _effects_to_dict(effects: Effects | None) -> dict[str, Any] | None:
    if effects is None or effects.empty:
        return None
    return {
        "incident": effects.incident,
        "seq": effects.seq,
        "plans": [
            {"key": p.key, "set": p.set_flags, "restore": list(p.restore)} for p in effects.plans
        ],
        "writing": effects.writing,
        "outbox": [
            {
                "action": n.action,
                "alert": {
                    **_alert_to_dict(n.alert),
                    "ends_at": n.alert.ends_at.isoformat() if n.alert.ends_at else None,
                    "idempotency_key": n.alert.idempotency_key,
                },
                "sinks": n.sinks,
            }
            for n in effects.outbox
        ],
    }


def _effects_from_dict(model: str, raw: dict[str, Any]) -> Effects:
    from monitor.actions.effects import Effects, FlagPlan, Notice

    outbox = []
    for notice in raw.get("outbox") or ():
        alert = _alert_from_dict(notice["alert"])
        ends_at = notice["alert"].get("ends_at")
        alert = replace(
            alert,
            ends_at=datetime.fromisoformat(ends_at) if ends_at else None,
            idempotency_key=notice["alert"].get("idempotency_key"),
        )
        sinks = notice.get("sinks")
        outbox.append(Notice(str(notice["action"]), alert, list(sinks) if sinks else None))
    return Effects(
        incident=raw.get("incident"),
        seq=int(raw.get("seq") or 0),
        plans=[
            FlagPlan(model, str(p["key"]), dict(p["set"]), list(p["restore"]))
            for p in raw.get("plans") or ()
        ],
        writing=dict(raw.get("writing") or {}),
        outbox=outbox,
    )


def snapshot_model(
    monitor: ModelMonitor,
    actions: Actions | None,
    partition: TopicPartition | None,
    offsets: dict[TopicPartition, int] | None = None,
) -> bytes:
    """Everything needed to continue a model elsewhere, as bytes.

    ``offsets``: per partition, the offset of the last record whose events the model's state
    holds; a restore skips that model's records up to it (a replay re-applies nothing).
    Saving changes nothing: events the engine holds back are saved as they wait, beside
    each detector's state, and fed to the detector on restore.
    """
    health = monitor.health
    members: dict[str, Any] = {}
    for signal in monitor.signals:
        digest = _spec_digest(signal.policy.detector_spec)
        for member in signal.members:
            waiting = monitor.waiting(member)
            members[member.name] = {
                "spec": digest,
                "detector": member.detector.to_bytes(),
                "waiting": None if waiting is None else pack({"values": waiting}),
                "last_conclusive_at": monitor.conclusive_at(member),
            }
    action_state: dict[str, Any] = {}
    if actions is not None:
        held = actions.held.get(monitor.model, {})
        effects = actions.effects.get(monitor.model)
        touched = set(held)
        if effects is not None:
            for plan in effects.plans:
                touched.update(plan.set_flags, plan.restore)
        # Only the prior values known: a flag missing here has not been read yet (so not
        # written either); None is a flag that had no value.
        action_state = {
            "held": held,
            "baseline": {f: actions.baseline[f] for f in touched if f in actions.baseline},
            "effects": _effects_to_dict(effects),
            "alerts": [
                _alert_to_dict(a)
                for a in (actions.dispatcher.active() if actions.dispatcher else [])
                if a.model == monitor.model
            ],
            "silenced_until": actions.silenced_until.get(monitor.model),
        }
    state = {
        "v": STATE_VERSION,
        "model": monitor.model,
        "partition": [partition.topic, partition.partition] if partition else None,
        "offsets": [[tp.topic, tp.partition, off] for tp, off in (offsets or {}).items()],
        "saved_at": time.time(),
        "events": monitor.events,
        "last_event_at": monitor.last_event_at,
        "model_version": monitor.model_version,
        "health": {
            "level": int(health.level),
            "last_transition_at": (
                health.last_transition_at if health.last_transition_at > -1e300 else None
            ),
            "healthy_since": health.healthy_since,
            "breach_since": {
                name: {str(int(lvl)): t for lvl, t in since.items()}
                for name, since in health.breach_since.items()
            },
        },
        "members": members,
        "actions": action_state,
        "outcomes": _outcomes_to_state(monitor),
    }
    if monitor.schema is not None:
        state["coverage"] = _coverage_state(monitor)
    return msgspec.msgpack.encode(state)


# -- auto coverage: the observed schema, from which a restore builds the same signals ------


def _coverage_state(monitor: ModelMonitor) -> dict[str, Any]:
    assert monitor.schema is not None
    return {
        "schema": monitor.schema.to_json(),
        "discovering": monitor.discovering,
        "started_at": monitor.discovery_started_at,
    }


def _restore_coverage(monitor: ModelMonitor, saved: Any, now: float) -> None:
    """Continue discovery where it was, or build the signals its schema gave (before the
    detectors are restored, by member name). No schema saved (a checkpoint of before auto
    coverage, or of a policy that did not discover): discovery starts afresh."""
    if monitor.schema is None or saved is None:
        return
    try:
        if not isinstance(saved, dict):
            raise ValueError(f"coverage is {type(saved).__name__}, not a map")
        schema = ObservedSchema.from_json(saved["schema"])
        discovering = bool(saved["discovering"])
        started_at = float(saved["started_at"])
    except (KeyError, TypeError, ValueError) as err:
        log.warning(
            "model %r: observed schema not restored, discovering again: %s", monitor.model, err
        )
        return
    monitor.schema = schema
    monitor.discovery_started_at = started_at
    if not discovering:
        # Built as they were when discovery ended; not announced again (the audit has it).
        monitor.end_discovery(now, announce=False)


class CheckpointHeader(msgspec.Struct):
    """The fields of a checkpoint needed to decide whether to restore it, decoded alone."""

    partition: list[Any] | None = None
    #: When the checkpoint was taken (its writer's clock).
    saved_at: float = 0.0
    #: [topic, partition, offset] of the last record applied to the model, per partition.
    offsets: list[Any] = msgspec.field(default_factory=list)

    @property
    def topic_partition(self) -> TopicPartition | None:
        part = self.partition
        return TopicPartition(part[0], int(part[1])) if part else None

    def applied_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the last offset the model's state holds (empty: unknown)."""
        found: dict[TopicPartition, int] = {}
        for entry in self.offsets:
            if (
                isinstance(entry, list)
                and len(entry) == 3
                and isinstance(entry[0], str)
                and isinstance(entry[1], int)
                and isinstance(entry[2], int)
            ):
                found[TopicPartition(entry[0], entry[1])] = entry[2]
        return found


read_header = msgspec.msgpack.Decoder(CheckpointHeader).decode


def partition_of(data: bytes) -> TopicPartition | None:
    return read_header(data).topic_partition


def _feed_waiting(detector: Detector, data: Any) -> None:
    """Feed a restored detector the events that waited in the engine when it was saved."""
    if not isinstance(data, bytes):
        raise StateError(f"waiting values are {type(data).__name__}, not bytes")
    values = unpack(data).get("values")
    try:
        detector.update_many(values)
    except (TypeError, ValueError) as err:
        raise StateError(f"invalid waiting values: {err}") from err


def restore_model(
    data: bytes, policy: ModelPolicy, now: float, actions: Actions | None
) -> ModelMonitor:
    """A monitor continuing from ``data`` under ``policy``.

    A detector whose spec changed since the checkpoint starts afresh (its old state would
    not mean the same thing); health and actions continue, so nothing is repeated.
    """
    try:
        raw = msgspec.msgpack.decode(data)
    except msgspec.DecodeError as err:
        raise CheckpointError(f"checkpoint is not msgpack: {err}") from err
    if raw.get("v") != STATE_VERSION:
        raise CheckpointError(f"checkpoint version {raw.get('v')!r}, expected {STATE_VERSION}")
    model: str = raw["model"]
    monitor = ModelMonitor.build(model, policy, now)
    monitor.events = int(raw["events"])
    monitor.last_event_at = raw["last_event_at"]
    monitor.model_version = raw["model_version"]
    _restore_coverage(monitor, raw.get("coverage"), now)
    _outcomes_from_state(monitor, raw.get("outcomes"), now)
    saved_members = raw["members"]
    for signal in monitor.signals:
        digest = _spec_digest(signal.policy.detector_spec)
        for member in signal.members:
            saved = saved_members.get(member.name)
            if saved is None or saved["spec"] != digest:
                continue
            try:
                detector = restore_detector(saved["detector"])
                # None, and absent from checkpoints of versions that fed them before saving.
                waiting = saved.get("waiting")
                if waiting is not None:
                    _feed_waiting(detector, waiting)
            except StateError as err:
                log.warning(
                    "model %r signal %r: detector state not restored: %s", model, member.name, err
                )
                continue
            member.detector = detector
            member.reading = member.detector.reading()
            member.last_conclusive_at = saved["last_conclusive_at"]
    health = raw["health"]
    machine = monitor.health
    machine.level = Level(health["level"])
    if health["last_transition_at"] is not None:
        machine.last_transition_at = float(health["last_transition_at"])
    machine.healthy_since = health["healthy_since"]
    machine.breach_since = {
        name: {Level(int(lvl)): float(t) for lvl, t in since.items()}
        for name, since in health["breach_since"].items()
    }
    action_state = raw.get("actions") or {}
    if actions is not None and action_state:
        held = dict(action_state.get("held") or {})
        if held:
            actions.held[model] = held
        # Prior values are restored for held flags and for pending plans and restores alike.
        for flag, value in (action_state.get("baseline") or {}).items():
            actions.baseline.setdefault(flag, value)
        if action_state.get("effects"):
            actions.effects[model] = _effects_from_dict(model, action_state["effects"])
        if action_state.get("silenced_until"):
            actions.silenced_until[model] = float(action_state["silenced_until"])
        if actions.dispatcher is not None:
            for alert in action_state.get("alerts") or ():
                actions.dispatcher.adopt(_alert_from_dict(alert))
    return monitor


# The outcome join (monitor/engine/outcomes.py): its pending predictions and counts, and the
# ground-truth signals the model gained when its outcomes came (restored before the detector
# states, so those signals' detectors continue too). Kept apart from the rest of the state.


def _outcomes_to_state(monitor: ModelMonitor) -> dict[str, Any] | None:
    join = monitor.outcomes
    if join is None and not monitor.added:
        return None
    return {
        "join": None if join is None else join.to_state(),
        "added": [
            {
                "policy": c.policy.model_dump(mode="json", by_alias=True, exclude_none=True),
                "origin": c.origin,
                "reason": c.reason,
            }
            for c in monitor.added
        ],
    }


def _outcomes_from_state(monitor: ModelMonitor, raw: Any, now: float) -> None:
    """Continue ``monitor``'s join and gained signals; a part that does not fit the policy
    any more (or is malformed) is left out with a warning, never fails the restore."""
    from monitor.config.policy import SignalPolicy
    from monitor.engine.discovery import CoveredSignal
    from monitor.engine.outcomes import OutcomeJoin

    if not isinstance(raw, dict):
        return
    policy = monitor.policy
    join = raw.get("join")
    if join is not None and policy.outcomes.join != "off":
        try:
            monitor.outcomes = OutcomeJoin.from_state(join, policy.outcomes)
        except ValueError as err:
            log.warning("model %r: outcome join not restored: %s", monitor.model, err)
    added = []
    for entry in raw.get("added") or ():
        try:
            added.append(
                CoveredSignal(
                    SignalPolicy.model_validate(entry["policy"]),
                    entry["origin"],
                    str(entry["reason"]),
                )
            )
        except (ValueError, KeyError, TypeError) as err:
            log.warning("model %r: a gained signal not restored: %s", monitor.model, err)
    if added and policy.discovers:
        monitor.add_signals(added, now)


def _file_name(model: str) -> str:
    """A fixed-length file name for any model id: the id is user input (any length, any
    bytes), so it never becomes a path itself; the file holds the id.

    >>> len(_file_name("m" * 10_000)) == len(_file_name("fraud")) == 45
    True
    """
    return hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()[:40] + ".ckpt"


def _legacy_file_name(model: str) -> str:
    # Before 0.2 the file name was the id in base64: unbounded, so a long id could not be
    # saved at all. Such files are still read, and renamed on load.
    return base64.urlsafe_b64encode(model.encode()).decode().rstrip("=") + ".ckpt"


class DirectoryStore:
    """One file per model in a directory, written atomically: for a single instance."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def start(self) -> None:
        await asyncio.to_thread(self.path.mkdir, parents=True, exist_ok=True)

    async def stop(self) -> None:
        return None

    async def load_all(self) -> dict[str, bytes]:
        def load() -> dict[str, bytes]:
            found: dict[str, bytes] = {}
            legacy: dict[str, tuple[Path, bytes]] = {}
            for file in self.path.glob("*.ckpt"):
                data = file.read_bytes()
                try:
                    model = msgspec.msgpack.decode(data)["model"]
                except (msgspec.DecodeError, KeyError, TypeError):
                    log.warning("checkpoint file %s is not a checkpoint: ignored", file)
                    continue
                if not isinstance(model, str):
                    continue
                if file.name == _file_name(model):
                    found[model] = data
                else:
                    legacy[model] = (file, data)
            for model, (file, data) in legacy.items():
                target = self.path / _file_name(model)
                if model in found:
                    file.unlink(missing_ok=True)  # the newer, hashed file supersedes it
                    continue
                with contextlib.suppress(OSError):
                    os.replace(file, target)
                found[model] = data
            return found

        return await asyncio.to_thread(load)

    async def save(self, items: dict[str, bytes]) -> None:
        def write() -> dict[str, str]:
            failed: dict[str, str] = {}
            for model, data in items.items():
                target = self.path / _file_name(model)
                tmp = target.with_suffix(".tmp")
                try:
                    with tmp.open("wb") as out:
                        out.write(data)
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(tmp, target)
                except OSError as err:
                    failed[model] = repr(err)
            return failed

        try:
            failed = await asyncio.to_thread(write)
        except OSError as err:
            raise CheckpointError(f"cannot write checkpoints to {self.path}: {err}") from err
        if failed:
            first = next(iter(failed.values()))
            raise CheckpointError(
                f"{len(failed)} of {len(items)} checkpoints not written to {self.path}: {first}",
                failed if len(failed) < len(items) else None,
            )

    async def delete(self, models: list[str]) -> None:
        def remove() -> None:
            for model in models:
                with contextlib.suppress(FileNotFoundError):
                    (self.path / _file_name(model)).unlink()

        await asyncio.to_thread(remove)


def _refused_for_itself(err: KafkaError) -> bool:
    """A write error that is about this record (its size, its topic's rules), not about the
    broker being reachable: retrying it cannot help, and it says nothing of the others."""
    return not err.retriable and not isinstance(err, KafkaTimeoutError | KafkaConnectionError)


class KafkaStore:
    """A compacted topic keyed by model id: the latest checkpoint of each model survives."""

    def __init__(self, settings: KafkaSettings, topic: str, *, max_bytes: int) -> None:
        self.settings = settings
        self.topic = topic
        self.max_bytes = max_bytes
        self._producer: AIOKafkaProducer | None = None

    async def ensure_topic(self) -> None:
        """Create the compacted topic when missing (at start, and after a broker outage that
        may have lost it: a memory-only or recreated cluster)."""
        from monitor.kafka.topics import ensure_topics

        s = self.settings
        await ensure_topics(
            s,
            {self.topic: {"partitions": 1, "config": {"cleanup.policy": "compact"}}},
            s.broker_timeout_s,
        )

    async def start(self) -> None:
        if self._producer is not None:
            return
        s = self.settings
        await self.ensure_topic()
        producer = AIOKafkaProducer(
            acks="all", max_request_size=self.max_bytes, linger_ms=0, **s.client_options()
        )
        await asyncio.wait_for(producer.start(), s.broker_timeout_s)
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(TimeoutError, KafkaError):
                await asyncio.wait_for(producer.stop(), self.settings.broker_timeout_s)

    async def load_all(self, deadline_s: float = 30.0) -> dict[str, bytes]:
        """Read the topic to its end; raise CheckpointError when that takes past deadline_s
        (a partial read would silently restart models from scratch)."""
        s = self.settings
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=max(self.max_bytes * 4, 52_428_800),
            max_partition_fetch_bytes=max(self.max_bytes * 2, 1_048_576),
            **s.client_options(),
        )
        await asyncio.wait_for(consumer.start(), s.broker_timeout_s)
        found: dict[str, bytes] = {}
        try:
            partitions = consumer.partitions_for_topic(self.topic) or {0}
            tps = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning()
            listed = await asyncio.wait_for(consumer.end_offsets(tps), s.broker_timeout_s)
            seen: dict[TopicPartition, int] = {}

            def read_to_the_end() -> bool:
                # The log end: the ListOffsets answer until a fetch tells its high watermark
                # (on Tansu the former is wrong, see quirks.read_end).
                return all(
                    seen.get(tp, -1) >= end - 1
                    for tp in tps
                    if (end := read_end(listed[tp], consumer.highwater(tp))) > 0
                )

            started = time.monotonic()
            while not read_to_the_end():
                if time.monotonic() - started > deadline_s:
                    ends = {tp: read_end(listed[tp], consumer.highwater(tp)) for tp in tps}
                    raise CheckpointError(
                        f"checkpoint topic {self.topic!r} not read to its end "
                        f"({seen} of {ends}) within {deadline_s:.0f}s"
                    )
                batch = await asyncio.wait_for(
                    consumer.getmany(timeout_ms=200), 200 / 1000 + s.broker_timeout_s
                )
                for tp, records in batch.items():
                    if records:
                        seen[tp] = max(seen.get(tp, -1), records[-1].offset)
                    for record in records:
                        if record.key is None:
                            continue
                        model = record.key.decode()
                        if record.value is None:
                            found.pop(model, None)
                        else:
                            found[model] = record.value
        finally:
            with contextlib.suppress(TimeoutError, KafkaError):
                await asyncio.wait_for(consumer.stop(), s.broker_timeout_s)
        return found

    async def save(self, items: dict[str, bytes]) -> None:
        producer = self._producer
        if producer is None:
            raise CheckpointError("KafkaStore is not started")
        failed: dict[str, str] = {}
        futures: dict[str, asyncio.Future[Any]] = {}
        try:
            for model, data in items.items():
                try:
                    futures[model] = await producer.send(
                        self.topic, value=data, key=model.encode("utf-8", "surrogatepass")
                    )
                except KafkaError as err:
                    if not _refused_for_itself(err):
                        raise
                    # Refused before it left (too large for max_request_size, say): this
                    # model only; the others are still written.
                    failed[model] = repr(err)
            results = await asyncio.wait_for(
                asyncio.gather(*futures.values(), return_exceptions=True),
                self.settings.broker_timeout_s,
            )
        except (TimeoutError, KafkaError) as err:
            raise CheckpointError(f"checkpoint write to {self.topic!r} failed: {err!r}") from err
        for model, result in zip(futures, results, strict=True):
            if isinstance(result, KafkaError) and _refused_for_itself(result):
                failed[model] = repr(result)
            elif isinstance(result, BaseException):
                raise CheckpointError(f"checkpoint write to {self.topic!r} failed: {result!r}")
        if failed:
            first = next(iter(failed.values()))
            raise CheckpointError(
                f"{len(failed)} of {len(items)} checkpoints not written to {self.topic!r}: {first}",
                failed,
            )

    async def delete(self, models: list[str]) -> None:
        producer = self._producer
        if producer is None:
            return
        futures = [await producer.send(self.topic, value=None, key=m.encode()) for m in models]
        await asyncio.wait_for(asyncio.gather(*futures), self.settings.broker_timeout_s)
