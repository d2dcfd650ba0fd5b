"""Throughput bench: a bare consumer (the ceiling), driftwarden end to end and a hand-written
River peer, side by side on one Tansu broker and one loaded topic per model count; plus
latency and memory.

Each contender runs in a fresh process of its own, the daemon as a user runs it: its default
``kafka`` settings (the bench sets only where to read: broker, topic, group, and ``earliest``
to replay the loaded topic) and the policy given: ``policy_steady.yaml`` (issue 16's 14
signals, references of 1,000) by default, ``policy_auto.yaml`` (the auto policy) as an option.
Every contender is timed on the same topic, batch by batch from the offsets it has committed
(the daemon's: those it marked applied): the fill phase (batches holding a record before its
partition's steady mark, where every model of the partition has its references and windows
full: known from the policy and the loaded data) and the steady state (batches past the
marks, up to 95% of the stream), beside the whole run.

Run ``python bench/throughput.py --help``. Results go to ``bench/results/throughput.md``
(what follows its ``## Before`` heading is kept).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime
import gc
import json
import logging
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry
from river import drift

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from detectors.window import ReferenceSpec  # noqa: E402
from monitor.config.settings import KafkaSettings, Settings, load_settings  # noqa: E402
from monitor.daemon.daemon import Daemon  # noqa: E402
from monitor.daemon.runtime import HeapTrimmer, tuned_runtime  # noqa: E402
from monitor.engine.discovery import ObservedSchema, resolved  # noqa: E402
from monitor.engine.events import Event  # noqa: E402
from monitor.errors import ConfigError  # noqa: E402
from monitor.observability.metrics import Metrics  # noqa: E402
from monitor.tools.embedded_broker import EmbeddedBroker, free_port  # noqa: E402
from monitor.tools.traffic import synthetic_batches, synthetic_models  # noqa: E402

__all__ = [
    "AUTO_POLICY",
    "BENCH_POLICY",
    "STEADY_POLICY",
    "BenchConfig",
    "Phase",
    "Phases",
    "Run",
    "SteadyMark",
    "Stream",
    "events_to_steady",
    "kafka_tuning",
    "load_topic",
    "main",
    "run_bench",
    "split_phases",
    "steady_need",
]

log = logging.getLogger(__name__)

#: Issue 16's steady-state policy: 14 signals with their calibrated defaults, references of
#: 1,000, no ``kafka`` tuning.
STEADY_POLICY = ROOT / "bench" / "policy_steady.yaml"
#: The auto policy, the default a user runs: whatever the events carry, discovered.
AUTO_POLICY = ROOT / "bench" / "policy_auto.yaml"
#: Issue 8's policy (16 detectors, tuned ``kafka``): the "before" figures were taken with it.
BENCH_POLICY = ROOT / "bench" / "policy_bench.yaml"
RESULTS = ROOT / "bench" / "results"
#: The numeric features of the workload (``synthetic_batches``' default ten), which the
#: hand-written peer watches.
NUMERIC = [f"f{i}" for i in range(10)]
#: The steady state ends at this share of the stream: past it the partitions drain unevenly
#: and the last batches are small, a tail no live stream has.
STEADY_END = 0.95
#: Where the report file's kept part (older figures) starts.
BEFORE_HEADING = "## Before"


# ------------------------------------------------------------------------------- data


def partition_of(model_index: int, partitions: int) -> int:
    # Explicit, so each run knows exactly how many records each partition holds (Tansu's
    # ListOffsets answers the last batch's base offset, not the log end).
    return model_index % partitions


def events_to_steady(settings: Settings, model: str, sample: Sequence[Event]) -> int:
    """Events of ``model`` before every detector it watches tests on a full window: the
    widest detector's reference (none when it is read from a file or an absolute threshold
    replaces it) plus its window, after discovery's ``discover_events`` when the policy
    discovers (the engine feeds the signals it discovers from the next event on; ``sample``:
    what the model's first events look like). 0: no windowed detector.
    """
    policy = settings.policy_for(model)
    discovering = 0
    if policy.discovers:
        schema = ObservedSchema()
        schema.observe(sample[: policy.auto.discover_events])
        discovering = policy.auto.discover_events
        policy = resolved(policy, schema)
    need = 0
    for signal_policy in policy.signals:
        spec = signal_policy.detector_spec
        reference = getattr(spec, "reference", None)
        window = getattr(spec, "window", None)
        if not isinstance(reference, ReferenceSpec) or not isinstance(window, int):
            continue  # a River wrapper: it tests from its first events
        fills = reference.path is None and getattr(spec, "threshold", None) is None
        need = max(need, (reference.size if fills else 0) + window)
    return need + discovering if need else 0


class SteadyMark:
    """Fed the loaded stream in order: where, in each partition, every model of it has had
    ``need`` events (the offset one past the record that completes the last of them)."""

    def __init__(self, n_models: int, partitions: int, need: int) -> None:
        self.n_models, self.partitions, self.need = n_models, partitions, need
        self.counts = dict.fromkeys(range(partitions), 0)
        self._seen = [0] * n_models
        self._reached = [0] * n_models

    def add(self, model_index: int) -> int:
        """Count one event of ``model_index``; return its partition."""
        p = partition_of(model_index, self.partitions)
        offset = self.counts[p]
        self.counts[p] = offset + 1
        seen = self._seen[model_index] = self._seen[model_index] + 1
        if seen == self.need:
            self._reached[model_index] = offset + 1
        return p

    def offsets(self) -> dict[int, int | None]:
        """The mark of each partition; None where some model never had ``need`` events."""
        out: dict[int, int | None] = dict.fromkeys(range(self.partitions), 0)
        for m, seen in enumerate(self._seen):
            p = partition_of(m, self.partitions)
            mark = out[p]
            if not seen or mark is None:
                continue  # a model with no event has no monitor to fill
            out[p] = None if seen < self.need else max(mark, self._reached[m])
        return out


@dataclass(frozen=True)
class Stream:
    """One loaded topic: records per partition and where its steady state starts."""

    topic: str
    models: int
    counts: dict[int, int]
    #: Events per model before every detector tests on a full window.
    need: int
    #: Steady-state mark per partition (None: never reached in this stream).
    fill: dict[int, int | None]
    load_s: float = math.nan

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def steady_end(self) -> int:
        return math.ceil(STEADY_END * self.total)

    @property
    def fill_total(self) -> int | None:
        marks = list(self.fill.values())
        if any(m is None for m in marks):
            return None
        return sum(m for m in marks if m is not None)


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication_factor=1)])
    finally:
        await admin.close()


async def load_topic(
    bootstrap: str, topic: str, n: int, n_models: int, partitions: int, need: int = 0
) -> Stream:
    """Produce ``n`` events in big batches; return the topic's records per partition and
    where every model of each has had ``need`` events."""
    started = time.perf_counter()
    await create_topic(bootstrap, topic, partitions)
    names = [m.encode() for m in synthetic_models(n_models)]
    mark = SteadyMark(n_models, partitions, need)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1_000_000, acks=1
    )
    await producer.start()
    try:
        pending = []
        for idx, values in synthetic_batches(n, n_models):
            batches = {p: producer.create_batch() for p in range(partitions)}
            for i, value in zip(idx.tolist(), values, strict=True):
                p = mark.add(i)
                batch = batches[p]
                if batch.append(key=names[i], value=value, timestamp=None) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=p))
                    batch = batches[p] = producer.create_batch()
                    batch.append(key=names[i], value=value, timestamp=None)
            for p, batch in batches.items():
                if batch.record_count():
                    pending.append(await producer.send_batch(batch, topic, partition=p))
            if len(pending) > 64:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return Stream(
        topic, n_models, dict(mark.counts), need, mark.offsets(), time.perf_counter() - started
    )


def steady_need(policy: Path, n_models: int) -> int:
    """Events per model to the steady state under ``policy`` (the widest of the models)."""
    settings = load_settings(policy)
    decode = msgspec.json.Decoder(Event).decode
    _, values = next(synthetic_batches(2000, 1, seed=1))
    sample = [decode(v) for v in values]
    return max(events_to_steady(settings, name, sample) for name in synthetic_models(n_models))


# ------------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Phase:
    """The batches of one run in one phase: their records and the time they took."""

    events: int
    seconds: float
    batches: int
    #: Records read (over every partition) before its first batch, and after its last.
    start: int
    end: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.nan


#: After a committed batch: (wall time, next offset per partition, RSS MiB).
Sample = tuple[float, dict[int, int], float]


@dataclass(frozen=True)
class Phases:
    fill: Phase | None
    steady: Phase | None
    #: Highest RSS sampled after a fill batch; RSS after the last steady batch.
    rss_fill_peak: float = math.nan
    rss_steady: float = math.nan


def _phase(batches: list[tuple[int, float, int, int]]) -> Phase | None:
    if not batches:
        return None
    return Phase(
        sum(b[0] for b in batches),
        sum(b[1] for b in batches),
        len(batches),
        batches[0][2],
        batches[-1][3],
    )


def split_phases(samples: Sequence[Sample], first: float, stream: Stream) -> Phases:
    """Each batch of a run (its records: those between two samples; its time: from the one
    to the other, the first from the first record read) is a *fill* batch when one of its
    records comes before its partition's steady mark, a *steady* one when none does and the
    run is not past ``STEADY_END`` of the stream when it ends, else the tail (left out).

    Per batch, not between two instants: a consumer may read one partition far ahead of
    the others (the bare aiokafka loop does), so no instant splits every partition at its
    mark; a batch is all steady work or holds some fill. None for a phase with no batch
    (no steady state where a model never fills).
    """
    fill: list[tuple[int, float, int, int]] = []
    steady: list[tuple[int, float, int, int]] = []
    rss_fill = rss_steady = math.nan
    before: dict[int, int] = {}
    since = first
    for t, positions, rss in samples:
        read = {p: n - before.get(p, 0) for p, n in positions.items() if n > before.get(p, 0)}
        total_before, total_after = sum(before.values()), sum(positions.values())
        batch = (sum(read.values()), t - since, total_before, total_after)
        marks = stream.fill
        if any(marks.get(p) is None or before.get(p, 0) < (marks[p] or 0) for p in read):
            fill.append(batch)
            rss_fill = rss if math.isnan(rss_fill) else max(rss_fill, rss)
        elif read and total_after <= stream.steady_end:
            steady.append(batch)
            rss_steady = rss
        before, since = positions, t
    return Phases(_phase(fill), _phase(steady), rss_fill, rss_steady)


def merge_samples(runs: Iterable[Sequence[Sample]]) -> list[Sample]:
    """The samples of processes sharing a group as one timeline: positions as of each time,
    each partition's furthest over the processes (a process keeps reporting the offset it had
    reached in a partition revoked from it; the new owner's is further on)."""
    events = sorted((t, i, pos, rss) for i, run in enumerate(runs) for t, pos, rss in run)
    positions: dict[int, int] = {}
    merged: list[Sample] = []
    for t, _, pos, rss in events:
        for p, n in pos.items():
            positions[p] = max(positions.get(p, 0), n)
        merged.append((t, dict(positions), rss))
    return merged


# ------------------------------------------------------------------------------- contenders


@dataclass
class Run:
    """One measured consumer run."""

    name: str
    events: int
    seconds: float
    rss_mib: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)
    fill: Phase | None = None
    steady: Phase | None = None
    #: Highest RSS sampled after a fill batch, and RSS after the last steady batch.
    rss_fill_peak: float = math.nan
    rss_steady: float = math.nan

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.nan

    @property
    def steady_rate(self) -> float:
        return self.steady.rate if self.steady is not None else math.nan

    @property
    def fill_rate(self) -> float:
        return self.fill.rate if self.fill is not None else math.nan


NAMES = {
    "bare": "(a) bare aiokafka + msgspec decode",
    "daemon": "(b) driftwarden end to end",
    "peer": "(c) hand-written orjson + River per event",
}


def fetch_options(settings: Settings) -> dict[str, Any]:
    """The consumer fetch options the daemon uses, so every contender reads alike."""
    k = settings.kafka
    return {
        "fetch_max_wait_ms": min(k.fetch_timeout_ms, 500),
        "max_partition_fetch_bytes": max(k.max_record_bytes * 2, 1_048_576),
        "fetch_max_bytes": max(k.max_record_bytes * 4, 52_428_800),
    }


async def _consume(
    bootstrap: str,
    topic: str,
    group: str,
    expected: dict[int, int] | None,
    settings: Settings,
    handle: Callable[[list[Any]], None],
    stop: asyncio.Event | None = None,
    samples: list[tuple[float, dict[int, int], float]] | None = None,
) -> tuple[int, float, float]:
    """Consume with manual commits after each batch until every expected offset is
    committed (or ``stop`` is set); return (records, first-record time, last-commit time).
    After each commit, ``samples`` gets (time, next offset per partition, RSS MiB).
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.kafka.max_poll_records,
        **fetch_options(settings),
    )
    await consumer.start()
    count = 0
    first = last = math.nan
    done: dict[int, int] = {}
    try:
        while stop is None or not stop.is_set():
            batch = await consumer.getmany(
                timeout_ms=settings.kafka.fetch_timeout_ms,
                max_records=settings.kafka.max_poll_records,
            )
            if not batch:
                continue
            if math.isnan(first):
                first = time.perf_counter()
            for records in batch.values():
                handle(records)
                count += len(records)
            offsets = {tp: OffsetAndMetadata(r[-1].offset + 1, "") for tp, r in batch.items()}
            await consumer.commit(offsets)
            last = time.perf_counter()
            for tp, meta in offsets.items():
                done[tp.partition] = meta.offset
            if samples is not None:
                samples.append((last, dict(done), rss_mib()))
            if expected is not None and all(done.get(p) == n for p, n in expected.items()):
                break
    finally:
        await consumer.stop()
    return count, first, last


def bare_handler() -> Callable[[list[Any]], None]:
    decode = msgspec.json.Decoder(Event).decode

    def handle(records: list[Any]) -> None:
        for record in records:
            decode(record.value)

    return handle


class RiverPeer:
    """What a user would hand-write: orjson and a dict of River detectors per model,
    ADWIN on each numeric feature, prediction, confidence and latency, DDM on error."""

    def __init__(self) -> None:
        self.models: dict[str, tuple[list[tuple[str, Any]], Any]] = {}
        self.drifts = 0

    def _detectors(self, model: str) -> tuple[list[tuple[str, Any]], Any]:
        found = self.models.get(model)
        if found is None:
            numeric = [(f, drift.ADWIN()) for f in NUMERIC]  # type: ignore[no-untyped-call]
            numeric += [
                (k, drift.ADWIN())  # type: ignore[no-untyped-call]
                for k in ("prediction", "confidence", "latency_ms")
            ]
            found = self.models[model] = (numeric, drift.binary.DDM())
        return found

    def handle(self, records: list[Any]) -> None:
        loads = orjson.loads
        for record in records:
            event = loads(record.value)
            numeric, ddm = self._detectors(event["model"])
            features = event.get("features") or {}
            for name, detector in numeric:
                value = features.get(name) if name[0] == "f" else event.get(name)
                if value is not None:
                    detector.update(value)
                    if detector.drift_detected:
                        self.drifts += 1
            error = event.get("error")
            if error is not None:
                ddm.update(bool(error))
                if ddm.drift_detected:
                    self.drifts += 1


def rss_mib() -> float:
    """Current resident set size of this process, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


#: The ``kafka`` settings the bench sets itself: where to read, and where side topics go.
BENCH_SET_KAFKA = frozenset(
    {"bootstrap_servers", "topics", "group_id", "dead_letter_topic", "review_topic"}
)


def bench_settings(bootstrap: str, topic: str, group: str, policy: Path) -> Settings:
    settings = load_settings(policy)
    settings.kafka.bootstrap_servers = bootstrap
    settings.kafka.topics = [topic]
    settings.kafka.group_id = group
    settings.kafka.dead_letter_topic = f"{topic}-dlq"
    settings.kafka.review_topic = f"{topic}-review"
    # A replay of the loaded topic, from its start (a live daemon starts at ``latest``).
    settings.kafka.auto_offset_reset = "earliest"
    settings.http.port = free_port()
    return settings


def kafka_tuning(policy: Path) -> dict[str, Any]:
    """The policy's ``kafka`` settings that differ from the defaults, past what the bench sets."""
    settings = load_settings(policy)
    defaults = KafkaSettings()
    return {
        name: getattr(settings.kafka, name)
        for name in KafkaSettings.model_fields
        if name not in BENCH_SET_KAFKA
        and name != "auto_offset_reset"
        and getattr(settings.kafka, name) != getattr(defaults, name)
    }


async def run_daemon(
    settings: Settings,
    expected: dict[int, int] | None,
    stop: asyncio.Event | None = None,
    samples: list[tuple[float, dict[int, int], float]] | None = None,
) -> tuple[Daemon, int, float, float]:
    """The daemon in-process, from its first fetched record to its last committed offset
    (or until ``stop``); return (daemon, applied events, first time, last commit time).
    After each commit, ``samples`` gets (time, the daemon's applied offsets, RSS MiB)."""
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(settings, metrics=metrics)
    first: list[float] = []
    last = [math.nan]
    applied: dict[int, int] = {}
    finished = asyncio.Event()
    consumer = daemon.consumer
    fetch, commit, mark_applied = consumer.fetch, consumer.commit, consumer.mark_applied

    # Wrapped on the instance: the registry is not polled (collecting every signal's gauges
    # every few ms would cost the daemon more than the work measured).
    async def timed_fetch() -> Any:
        batch = await fetch()
        if batch and not first:
            first.append(time.perf_counter())
        return batch

    def tracked_mark_applied(batch: Any) -> None:
        mark_applied(batch)
        for tp, records in batch.items():
            if records:
                applied[tp.partition] = records[-1].offset + 1

    async def timed_commit() -> bool:
        ok = await commit()
        if ok and applied:
            last[0] = time.perf_counter()
            if samples is not None:
                samples.append((last[0], dict(applied), rss_mib()))
            if expected is not None and all(applied.get(p) == n for p, n in expected.items()):
                finished.set()
        return ok

    consumer.fetch = timed_fetch  # type: ignore[method-assign]
    consumer.commit = timed_commit  # type: ignore[method-assign]
    consumer.mark_applied = tracked_mark_applied  # type: ignore[method-assign]
    task = asyncio.create_task(daemon.run())
    waits = [asyncio.ensure_future(finished.wait()), task]
    if stop is not None:
        waits.append(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        ended = last[0]
    finally:
        for w in waits:
            if w is not task:
                w.cancel()
        daemon.request_stop("bench done")
        code = await asyncio.wait_for(task, 60)
    if code != 0:
        raise RuntimeError(f"daemon exited with {code}")
    return daemon, daemon.applied_events, first[0] if first else math.nan, ended


def daemon_counts(daemon: Daemon) -> dict[str, Any]:
    """What the daemon watched and did: models, detectors, health transitions."""
    return {
        "models": len(daemon.engine.models),
        "detectors": sum(len(s.members) for m in daemon.engine.models.values() for s in m.signals),
        "transitions": int(
            sum(
                s.value
                for metric in daemon.metrics.registry.collect()
                if metric.name == "driftwarden_health_transitions"
                for s in metric.samples
                if s.name.endswith("_total")
            )
        ),
        "applied_events": daemon.applied_events,
    }


def _worker_main(argv: list[str]) -> int:
    """``throughput.py worker KIND BOOTSTRAP TOPIC GROUP POLICY [EXPECTED]``: KIND is
    ``bare``, ``peer`` or ``daemon``; consume until every offset of EXPECTED (JSON
    ``{partition: records}``) is committed, or until SIGTERM without it; then print one JSON
    line: records, first-record and last-commit wall times, a sample (wall time, next offset
    per partition, RSS MiB) after each committed batch, peak RSS and the contender's counts."""
    if len(argv) not in (5, 6) or argv[0] not in NAMES:
        raise SystemExit(
            f"usage: worker {{{','.join(NAMES)}}} BOOTSTRAP TOPIC GROUP POLICY [EXPECTED]"
        )
    kind, bootstrap, topic, group, policy = argv[:5]
    expected = {int(p): int(n) for p, n in json.loads(argv[5]).items()} if len(argv) > 5 else None

    async def go() -> dict[str, Any]:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        settings = bench_settings(bootstrap, topic, group, Path(policy))
        offset = time.time() - time.perf_counter()
        samples: list[tuple[float, dict[int, int], float]] = []
        extra: dict[str, Any] = {}
        gc.collect()
        if kind == "bare":
            n, t0, t1 = await _consume(
                bootstrap, topic, group, expected, settings, bare_handler(), stop, samples
            )
        elif kind == "peer":
            peer = RiverPeer()
            n, t0, t1 = await _consume(
                bootstrap, topic, group, expected, settings, peer.handle, stop, samples
            )
            extra["drifts"] = peer.drifts
        else:
            daemon, n, t0, t1 = await run_daemon(settings, expected, stop, samples)
            extra = daemon_counts(daemon)
        return {
            "records": n,
            "first": t0 + offset,
            "last": t1 + offset,
            "samples": [[t + offset, pos, rss] for t, pos, rss in samples],
            "rss_mib": rss_mib(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "extra": extra,
        }

    print(json.dumps(asyncio.run(go())), flush=True)
    return 0


def _samples(report: dict[str, Any]) -> list[Sample]:
    return [(t, {int(p): n for p, n in pos.items()}, rss) for t, pos, rss in report["samples"]]


def _run_of(name: str, report: dict[str, Any], samples: list[Sample], stream: Stream) -> Run:
    run = Run(
        name,
        report["records"],
        report["last"] - report["first"],
        report["rss_mib"],
        dict(report["extra"], peak_rss_mib=report.get("peak_rss_mib")),
    )
    phases = split_phases(samples, report["first"], stream)
    run.fill, run.steady = phases.fill, phases.steady
    run.rss_fill_peak, run.rss_steady = phases.rss_fill_peak, phases.rss_steady
    return run


def worker_command(kind: str, bootstrap: str, topic: str, group: str, policy: Path) -> list[str]:
    return [sys.executable, __file__, "worker", kind, bootstrap, topic, group, str(policy)]


async def _report_of(proc: asyncio.subprocess.Process, timeout_s: float, what: str) -> Any:
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise TimeoutError(f"{what} did not finish in {timeout_s:.0f} s") from None
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{what} exited with {proc.returncode}")
    return json.loads(lines[-1])


async def measure_one(kind: str, bootstrap: str, stream: Stream, cfg: BenchConfig, tag: str) -> Run:
    """One contender in a fresh process, over the whole of ``stream``."""
    proc = await asyncio.create_subprocess_exec(
        *worker_command(kind, bootstrap, stream.topic, f"{kind}-{tag}", cfg.policy),
        json.dumps(stream.counts),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    report = await _report_of(proc, cfg.run_timeout_s, f"the {kind} worker")
    run = _run_of(NAMES[kind], report, _samples(report), stream)
    if run.events != stream.total:
        raise RuntimeError(f"{kind} read {run.events} records, expected {stream.total}")
    applied = run.extra.get("applied_events")
    if applied is not None and applied != stream.total:
        raise RuntimeError(f"daemon applied {applied} events, expected {stream.total}")
    return run


def _median(values: Iterable[float]) -> float:
    ok = [v for v in values if not math.isnan(v)]
    return float(np.median(ok)) if ok else math.nan


def summarise(runs: dict[str, list[Run]]) -> dict[str, float]:
    """Median rates of each contender (steady state, fill phase, whole run), and the ratios
    the issue sets targets on: ``b/a`` etc. on the steady state, ``b/a whole`` on whole runs.
    """
    out: dict[str, float] = {}
    for kind, rs in runs.items():
        out[kind] = _median(r.steady_rate for r in rs)
        out[f"{kind} fill"] = _median(r.fill_rate for r in rs)
        out[f"{kind} whole"] = _median(r.rate for r in rs)
    for key, x, y in (
        ("b/a", "daemon", "bare"),
        ("b/c", "daemon", "peer"),
        ("c/a", "peer", "bare"),
    ):
        if x in runs and y in runs:
            for suffix in ("", " fill", " whole"):
                out[key + suffix] = out[x + suffix] / out[y + suffix]
    return out


# ------------------------------------------------------------------------------- two processes


async def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        total = 0
        for p in range(partitions):
            total += await consumer.committed(TopicPartition(topic, p)) or 0
        return total
    finally:
        await consumer.stop()


async def measure_group(
    kind: str, bootstrap: str, stream: Stream, cfg: BenchConfig, tag: str
) -> Run:
    """Two worker processes in one consumer group, from the first record either of them
    read to the last commit either of them made; the steady state on their merged offsets."""
    group = f"{kind}2-{tag}"
    total = stream.total
    command = worker_command(kind, bootstrap, stream.topic, group, cfg.policy)
    procs = [
        await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + cfg.run_timeout_s
        for _ in range(100_000):
            if await committed_total(bootstrap, group, stream.topic, cfg.partitions) >= total:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"group {group} did not commit {total} records in time")
            if any(p.returncode is not None for p in procs):
                raise RuntimeError(f"a {kind} worker died")
            await asyncio.sleep(0.5)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    reports = [await _report_of(p, 90, f"a {kind} group worker") for p in procs]
    firsts = [r["first"] for r in reports if not math.isnan(r["first"])]
    lasts = [r["last"] for r in reports if not math.isnan(r["last"])]
    merged = {
        "records": sum(r["records"] for r in reports),
        "first": min(firsts),
        "last": max(lasts),
        "rss_mib": max(r["rss_mib"] for r in reports),
        "extra": {"split": [r["records"] for r in reports]},
    }
    name = "(a2) 2 bare consumers, one group" if kind == "bare" else "(b2) 2 driftwarden, one group"
    return _run_of(name, merged, merge_samples(_samples(r) for r in reports), stream)


# ------------------------------------------------------------------------------- latency


async def _until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` every 50 ms for up to ``timeout_s``; return its last value."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.05) + 1):
        if condition() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return condition()


#: Issue 16's latency target holds at this rate of live traffic.
LATENCY_TARGET_RATE = 50_000
INCIDENT_MODEL = "model-incident"
INCIDENT_FLAG = "model-incident-fallback"
#: One event in this many is the incident model's (1,000 events/s at 50k events/s).
INCIDENT_SHARE = 50
#: The incident model's policy: its error rate alone, absolute threshold, no hold time.
INCIDENT_POLICY: dict[str, Any] = {
    "mode": "enforce",
    "health": {"for": "0s", "cooldown": "500ms", "recover_after": "500ms"},
    "signals": [
        {
            "name": "error_rate",
            "source": "error",
            "detector": {
                "type": "rate_window",
                "window": 200,
                "min_samples": 100,
                "stride": 10,
                "persist": 0,
            },
            "thresholds": {"degraded": 0.5},
        }
    ],
    "actions": {"degraded": {"flags": {INCIDENT_FLAG: True}}},
}


def _producer_main(argv: list[str]) -> int:
    """``throughput.py producer BOOTSTRAP TOPIC RATE SECONDS MODELS PERIOD SURGE PARTITIONS
    WARMUP``: the first surge starts WARMUP seconds in (the rate is then sustained, not a cold start);
    at a steady RATE events/s, each carrying its produce time in ``ts``; the incident model's
    events are errors for the first SURGE seconds of every PERIOD. Prints one JSON line:
    the rate achieved and the incident model's (ts, error) sequence."""
    bootstrap, topic = argv[0], argv[1]
    rate, seconds, n_models = float(argv[2]), float(argv[3]), int(argv[4])
    period, surge, partitions = float(argv[5]), float(argv[6]), int(argv[7])
    warmup = float(argv[8]) if len(argv) > 8 else 0.0

    async def go() -> dict[str, Any]:
        names = synthetic_models(n_models)
        bodies = [
            msgspec.json.decode(v) for v in next(synthetic_batches(20_000, n_models, seed=11))[1]
        ]
        encode = msgspec.json.Encoder().encode
        rng = np.random.default_rng(3)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
        await producer.start()
        incident: list[tuple[float, bool]] = []
        sent = 0
        lag_max = 0.0
        incident_partition = 0
        started = time.perf_counter()
        wall0 = time.time()
        try:
            while (elapsed := time.perf_counter() - started) < seconds:
                due = int(elapsed * rate) - sent
                lag_max = max(lag_max, due / rate)
                batches: dict[int, Any] = {}
                pending = []
                # At most 50 ms of events per round: a producer that falls behind (a loaded
                # machine) still stops on time, at the rate it reached, not after the backlog.
                for _ in range(max(0, min(due, int(rate * 0.05) + 1))):
                    body = bodies[sent % len(bodies)]
                    now = time.time()
                    body["ts"] = now
                    if sent % INCIDENT_SHARE == 0:
                        model = INCIDENT_MODEL
                        since = now - wall0 - warmup
                        error = since >= 0 and since % period < surge
                        incident.append((now, error))
                        partition = incident_partition
                    else:
                        index = int(rng.integers(n_models))
                        model = names[index]
                        error = bool(body["error"])
                        partition = partition_of(index, partitions)
                    body["model"] = model
                    value = encode({**body, "error": error})
                    batch = batches.get(partition)
                    if batch is None:
                        batch = batches[partition] = producer.create_batch()
                    if batch.append(key=model.encode(), value=value, timestamp=None) is None:
                        pending.append(await producer.send_batch(batch, topic, partition=partition))
                        batch = batches[partition] = producer.create_batch()
                        batch.append(key=model.encode(), value=value, timestamp=None)
                    sent += 1
                for partition, batch in batches.items():
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                await asyncio.gather(*pending)
                await asyncio.sleep(0.005)
            achieved = sent / (time.perf_counter() - started)
        finally:
            await producer.stop()
        return {"sent": sent, "rate": achieved, "max_behind_s": lag_max, "incident": incident}

    print(json.dumps(asyncio.run(go())), flush=True)
    return 0


def breach_completions(incident: list[tuple[float, bool]], settings: Settings) -> list[float]:
    """Produce times of the events that complete each breach of the incident model: its
    error sequence replayed through the same detector and thresholds as the daemon's."""
    from detectors.registry import build_detector
    from monitor.config.policy import Level

    signal = settings.policy_for(INCIDENT_MODEL).signals[0]
    detector = build_detector(signal.detector_spec)
    thresholds = signal.thresholds
    assert thresholds is not None
    completions = []
    breached = False
    for ts, error in incident:
        reading = detector.update_many(np.array([1.0 if error else 0.0]))
        if math.isnan(reading.statistic):
            continue
        now = thresholds.level_of(reading.statistic) >= Level.DEGRADED
        if now and not breached:
            completions.append(ts)
        breached = now
    return completions


def flag_applied_times(audit: Path) -> list[float]:
    """The daemon's own times (``at``) of its ``flag_applied`` entries turning the flag on."""
    if not audit.exists():
        return []
    entries = [json.loads(line) for line in audit.read_text().splitlines() if line]
    return [
        e["at"]
        for e in entries
        if e.get("kind") == "flag_applied"
        and e.get("flag") == INCIDENT_FLAG
        and e.get("value") is True
    ]


class FlagFileWatcher:
    """Watches a flagd file as a flagd provider would: polls it every ``poll_s`` and keeps
    the wall time at which each write that turns ``flag`` on was first seen (the daemon
    writes the file whole and renames it in place, so a new inode or mtime is a new write).
    """

    def __init__(self, path: Path, flag: str, poll_s: float = 0.005) -> None:
        self.path, self.flag, self.poll_s = path, flag, poll_s
        #: Wall times (``time.time()``) the flag was seen turning on.
        self.turned_on: list[float] = []
        #: Versions of the file read; the last one's identity, and whether the flag was on.
        self.writes = 0
        self.seen: tuple[int, int, int] | None = None
        self.on = False
        self._stop = asyncio.Event()

    @staticmethod
    def version(path: Path) -> tuple[int, int, int] | None:
        """What tells one written version of ``path`` from the next (None: no file)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def stop(self) -> None:
        self._stop.set()

    def poll(self) -> None:
        """One look at the file; a version not seen yet is read."""
        key = self.version(self.path)
        if key is None or key == self.seen:
            return
        seen = time.time()
        try:
            definition = json.loads(self.path.read_bytes())["flags"][self.flag]
            now_on = definition.get("defaultVariant") == "on"
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return  # replaced between stat and read, or not a definition of ours: look again
        self.writes += 1
        if now_on and not self.on:
            self.turned_on.append(seen)
        self.seen, self.on = key, now_on

    async def run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            await asyncio.sleep(self.poll_s)


def match_latencies(completions: Sequence[float], seen: Sequence[float]) -> list[float]:
    """Per breach completion, in order, the delay to the first flag write seen after it that
    no earlier breach took (NaN: none left, a missed breach). In order, not "before the next
    breach": a daemon that lags by more than the surge period flips the flag for one breach
    after the next has completed, and that write answers the earlier one.
    """
    writes = sorted(seen)
    latencies = []
    at = 0
    for done in completions:
        while at < len(writes) and writes[at] < done:
            at += 1  # a write before this breach answers none left (an earlier one's repeat)
        if at < len(writes):
            latencies.append(writes[at] - done)
            at += 1
        else:
            latencies.append(math.nan)
    return latencies


async def measure_latency(bootstrap: str, cfg: BenchConfig, tag: str) -> dict[str, Any]:
    """Breach to flag write, across processes: the daemon (``driftwarden run``, flagd file
    backend) and a producer at ``latency_rate`` events/s, each in its own process; the
    incident model's error surges repeat every ``latency_period`` seconds."""
    import yaml

    topic = f"latency-{tag}"
    await create_topic(bootstrap, topic, cfg.partitions)
    tmp = Path(tempfile.mkdtemp(prefix="dw-latency-"))
    flags, audit = tmp / "flags.json", tmp / "audit.jsonl"
    flags.write_text(
        json.dumps(
            {
                "flags": {
                    INCIDENT_FLAG: {
                        "state": "ENABLED",
                        "variants": {"on": True, "off": False},
                        "defaultVariant": "off",
                    }
                }
            }
        )
    )
    data = yaml.safe_load(cfg.policy.read_text())
    data.setdefault("kafka", {}).update(
        bootstrap_servers=bootstrap,
        topics=[topic],
        group_id=f"latency-{tag}",
        dead_letter_topic=f"{topic}-dlq",
        review_topic=f"{topic}-review",
        # A fresh topic: the same as a live start, without racing the first records.
        auto_offset_reset="earliest",
    )
    data.setdefault("http", {})["port"] = free_port()
    data["flags"] = {"type": "flagd_file", "path": str(flags)}
    data["actions"] = {"audit_log": str(audit)}
    data["alerts"] = {"sinks": []}
    data.setdefault("models", {})[INCIDENT_MODEL] = INCIDENT_POLICY
    config = tmp / "policy.yaml"
    config.write_text(yaml.safe_dump(data))
    settings = load_settings(config)
    watcher = FlagFileWatcher(flags, INCIDENT_FLAG)
    watching = asyncio.create_task(watcher.run())
    drain_s = math.nan
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", "run", "--config", str(config), cwd=ROOT
    )
    try:
        ready = f"http://127.0.0.1:{data['http']['port']}/readyz"
        import aiohttp

        async with aiohttp.ClientSession() as http:
            for _ in range(1200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(ready) as response:
                        if response.status == 200:
                            break
                if daemon.returncode is not None:
                    raise RuntimeError("the daemon exited before it was ready")
                await asyncio.sleep(0.05)
        producer = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "producer",
            bootstrap,
            topic,
            str(cfg.latency_rate),
            str(cfg.latency_seconds),
            str(max(cfg.models)),
            str(cfg.latency_period),
            str(cfg.latency_surge),
            str(cfg.partitions),
            str(cfg.latency_warmup),
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        report = await _report_of(producer, cfg.latency_seconds + 120, "the latency producer")
        ended = time.monotonic()
        completions = breach_completions(report["incident"], settings)
        # Whether the daemon kept up: how long after the producer stopped it had committed
        # every record (0: it was never more than a batch behind).
        group = str(data["kafka"]["group_id"])
        for _ in range(1200):
            if await committed_total(bootstrap, group, topic, cfg.partitions) >= report["sent"]:
                drain_s = time.monotonic() - ended
                break
            if time.monotonic() - ended > 60:
                break
            await asyncio.sleep(0.25)
        await _until(lambda: len(watcher.turned_on) >= len(completions), 30)
    finally:
        watcher.stop()
        await watching
        with contextlib.suppress(ProcessLookupError):
            daemon.send_signal(signal.SIGTERM)
        await asyncio.wait_for(daemon.wait(), 60)
    latencies = match_latencies(completions, watcher.turned_on)
    audited = match_latencies(completions, flag_applied_times(audit))
    arr = np.array(latencies)
    ok = arr[~np.isnan(arr)]
    audited_ok = np.array([x for x in audited if not math.isnan(x)])
    return {
        "produced": report["sent"],
        "produced_per_s": report["rate"],
        "producer_max_behind_s": report["max_behind_s"],
        "drain_s": drain_s,
        "incidents": len(completions),
        "flag_writes": len(watcher.turned_on),
        "missed": int(np.isnan(arr).sum()),
        "latencies_s": latencies,
        "audit_p99_s": float(np.quantile(audited_ok, 0.99)) if audited_ok.size else math.nan,
        "p50_s": float(np.quantile(ok, 0.5)) if ok.size else math.nan,
        "p99_s": float(np.quantile(ok, 0.99)) if ok.size else math.nan,
        "max_s": float(ok.max()) if ok.size else math.nan,
    }


# ------------------------------------------------------------------------------- memory


#: The memory runs' policy: the auto policy, with the calibrated default references (10,000
#: values), as a user runs it (``policy_memory.yaml``: issue 8's 20 named detectors).
MEMORY_POLICY = AUTO_POLICY
#: Numeric features per event in the memory runs (``policy_memory.yaml`` watches 14).
MEMORY_NUMERIC = 14
#: The leak check's first sample: RSS from here to its last must stay within 5%.
LEAK_FROM = 1_000_000
#: The leak check gives each model this share more events than it needs to fill by LEAK_FROM.
LEAK_MARGIN = 1.25


def memory_need(policy: Path) -> int:
    """Events per model before every detector of the memory runs tests on a full window."""
    settings = load_settings(policy)
    decode = msgspec.json.Decoder(Event).decode
    _, values = next(synthetic_batches(2000, 1, seed=1, n_numeric=MEMORY_NUMERIC))
    sample = [decode(v) for v in values]
    return events_to_steady(settings, "model-0000", sample)


def leak_models(policy: Path, n_models: int) -> int:
    """The most models (at most ``n_models``) whose every reference and window is full, with a
    margin, before the leak check's first sample: past it, RSS should no longer grow."""
    need = memory_need(policy)
    if not need:
        return n_models
    return max(1, min(n_models, int(LEAK_FROM / (need * LEAK_MARGIN))))


def memory_events(policy: Path, n_models: int) -> int:
    """Events for the fill run: every model past its need (with a margin), then 1M more so
    that the last samples are taken with every reference full; whole millions."""
    need = memory_need(policy) or 1
    return (math.ceil(need * n_models * 1.05 / 1_000_000) + 1) * 1_000_000


def _reference_full(detector: Any) -> bool:
    reference = getattr(detector, "_reference", None)
    return reference is None or bool(reference.ready)


def _memory_main(argv: list[str]) -> int:
    """``throughput.py memory POLICY EVENTS MODELS [REFERENCE]``: feed the engine alone,
    print one JSON line with RSS every million events (a fresh process: nothing else
    resident). REFERENCE overrides every detector's reference size (0: the policy's)."""
    policy, events, n_models = Path(argv[0]), int(argv[1]), int(argv[2])
    reference = int(argv[3]) if len(argv) > 3 else 0
    from monitor.engine.engine import Engine

    if reference:
        import yaml

        data = yaml.safe_load(policy.read_text())
        for signal in data["models"]["default"]["signals"]:
            signal["detector"]["reference"] = {"size": reference}
        policy = Path(tempfile.mkdtemp()) / policy.name
        policy.write_text(yaml.safe_dump(data))
    settings = load_settings(policy)
    engine = Engine(settings.policy_for, max_models=settings.engine.max_models)
    decode = msgspec.json.Decoder(Event).decode
    batch = settings.kafka.max_poll_records
    samples: dict[int, float] = {}
    full: dict[int, float] = {}
    done = 0
    now = time.time()
    base = rss_mib()
    started = time.perf_counter()
    heap = HeapTrimmer()
    with tuned_runtime():  # as in the daemon
        for _, values in synthetic_batches(
            events, n_models, seed=5, chunk=100_000, n_numeric=MEMORY_NUMERIC
        ):
            # In the daemon's batches (its default ``max_poll_records``): decoding a whole
            # 100k chunk at once would leave a heap high-water mark no daemon has.
            for at in range(0, len(values), batch):
                engine.apply([decode(v) for v in values[at : at + batch]], now)
            engine.tick(now)  # the daemon's once-a-second tick (one chunk is one second here)
            heap.maybe(now)  # and its heap trim
            done += len(values)
            now += 1.0
            if done % 1_000_000 == 0:
                gc.collect()
                samples[done] = rss_mib()
                members = [
                    m for mm in engine.models.values() for s in mm.signals for m in s.members
                ]
                full[done] = sum(_reference_full(m.detector) for m in members) / max(
                    1, len(members)
                )
                print(
                    f"memory: {done:,} events, RSS {samples[done]:,.0f} MiB, "
                    f"{full[done]:.1%} references full",
                    file=sys.stderr,
                    flush=True,
                )
    detectors = sum(len(s.members) for m in engine.models.values() for s in m.signals)
    report = {
        "policy": policy.name,
        "reference": reference,
        "models": len(engine.models),
        "detectors": detectors,
        "baseline_mib": base,
        "batch": batch,
        "rss_mib": samples,
        "full": full,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(report), flush=True)
    return 0


def measure_memory(policy: Path, events: int, n_models: int, reference: int = 0) -> dict[str, Any]:
    """Run ``_memory_main`` in a fresh process; return its report with the 1M -> end growth
    and the peak (while references fill) over the steady-state RSS (the last sample, once
    every reference is full; NaN if one is not).
    """
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "memory",
            str(policy),
            str(events),
            str(n_models),
            str(reference),
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    rss = {int(k): v for k, v in report["rss_mib"].items()}
    report["rss_mib"] = rss
    report["full"] = {int(k): v for k, v in report["full"].items()}
    first = rss.get(LEAK_FROM, math.nan)
    report["growth_1m_to_end"] = (rss[max(rss)] - first) / first
    report["full_at_1m"] = report["full"].get(LEAK_FROM, math.nan)
    last = max(rss)
    steady = rss[last] if report["full"][last] >= 1.0 else math.nan
    report["steady_rss_mib"] = steady
    report["fill_peak_ratio"] = report["peak_rss_mib"] / steady
    return report


# ------------------------------------------------------------------------------- config


@dataclass
class BenchConfig:
    #: Model counts, each on a topic of its own; ``events`` is one count for all, or one each.
    models: tuple[int, ...] = (200, 1000)
    events: tuple[int, ...] = (1_000_000, 3_000_000)
    partitions: int = 4
    repeats: int = 3
    policy: Path = STEADY_POLICY
    two_process: bool = False
    latency: bool = False
    latency_rate: int = 50_000
    #: 5 s warm-up, then a surge every 3 s: 22 surges, enough for a p99 worth the name.
    latency_seconds: float = 72.0
    latency_period: float = 3.0
    latency_surge: float = 0.5
    latency_warmup: float = 5.0
    memory: bool = False
    memory_policy: Path = MEMORY_POLICY
    #: Events of the fill run (0: enough for every reference of the largest model count to
    #: fill, and 1M more, from the policy: ``memory_events``).
    memory_events: int = 0
    leak_events: int = 10_000_000
    #: Longest one contender's run may take before the bench gives up on it.
    run_timeout_s: float = 3600.0
    out: Path | None = RESULTS / "throughput.md"
    label: str = ""

    def sets(self) -> list[tuple[int, int]]:
        """(models, events) of each measured topic; ValueError naming a bad count."""
        if not self.models:
            raise ValueError("models: give at least one model count")
        if len(self.events) not in (1, len(self.models)):
            raise ValueError(
                f"events: give one count, or one per model count ({len(self.models)}), "
                f"not {len(self.events)}"
            )
        events = self.events * len(self.models) if len(self.events) == 1 else self.events
        for what, values in (("models", self.models), ("events", events)):
            bad = [v for v in values if v < 1]
            if bad:
                raise ValueError(f"{what}: counts must be at least 1, not {bad[0]}")
        if self.repeats < 1 or self.partitions < 1:
            raise ValueError(f"repeats and partitions must be at least 1 ({self})")
        return list(zip(self.models, events, strict=True))

    def command(self) -> str:
        """The command line that runs this configuration."""
        parts = [
            "python bench/throughput.py",
            "--models " + " ".join(str(m) for m in self.models),
            "--events " + " ".join(str(e) for e in self.events),
            f"--repeats {self.repeats}",
        ]
        if self.partitions != 4:
            parts.append(f"--partitions {self.partitions}")
        with contextlib.suppress(ValueError):
            parts.append(f"--policy {self.policy.resolve().relative_to(ROOT)}")
        parts += ["--two-process"] if self.two_process else []
        if self.latency:
            parts.append(f"--latency --latency-rate {self.latency_rate}")
        parts += ["--memory"] if self.memory else []
        return " ".join(parts)


# ------------------------------------------------------------------------------- report


def _rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "log", "-1", "--format=%h %s"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    return "unknown"


def _steady_note(stream: Stream) -> str:
    fill = stream.fill_total
    if fill is None:
        short = [p for p, m in stream.fill.items() if m is None]
        return (
            f"**Steady state not reached**: in partitions {short} some model has fewer than "
            f"{stream.need:,} events in the whole stream (more events, or fewer models)."
        )
    share = fill / stream.total if stream.total else math.nan
    text = (
        f"Steady mark: every model has had {stream.need:,} events once each partition passed "
        f"{dict(sorted(stream.fill.items()))}, {fill:,} of {stream.total:,} records "
        f"({share:.0%})"
    )
    if fill >= stream.steady_end:
        return text + f": **past {STEADY_END:.0%} of the stream, no steady state to measure**."
    return text + f"; the steady state ends at {STEADY_END:.0%} ({stream.steady_end:,})."


def render_set(entry: dict[str, Any]) -> list[str]:
    stream: Stream = entry["stream"]
    runs: dict[str, list[Run]] = entry["runs"]
    summary: dict[str, float] = entry["summary"]
    lines = [
        f"## {stream.models:,} models, {stream.total:,} events",
        "",
        f"Loaded in {stream.load_s:.1f} s, records per partition "
        f"{dict(sorted(stream.counts.items()))}. " + _steady_note(stream),
        "",
        "| contender | steady events/s (median) | steady runs | fill events/s | whole run "
        "events/s | steady batches: records (read before, after) | RSS MiB fill peak / steady |",
        "| --- | ---: | --- | ---: | ---: | --- | --- |",
    ]
    for kind, rs in runs.items():
        last = rs[-1]
        st = last.steady
        stretch = "-" if st is None else f"{st.batches}: {st.events:,} ({st.start:,}, {st.end:,})"
        lines.append(
            f"| {last.name} | {_rate(summary[kind])} | "
            + ", ".join(_rate(r.steady_rate) for r in rs)
            + f" | {_rate(summary[kind + ' fill'])} | {_rate(summary[kind + ' whole'])} | "
            f"{stretch} | {_rate(last.rss_fill_peak)} / {_rate(last.rss_steady)} |"
        )
    lines += [
        "",
        "| ratio | steady state | target | fill phase | whole run |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for key, target in (("b/a", ">= 0.7"), ("b/c", ">= 1.5"), ("c/a", "")):
        if key in summary:
            lines.append(
                f"| ({key[0]})/({key[2]}) | {_ratio(summary[key])} | {target} | "
                f"{_ratio(summary[key + ' fill'])} | {_ratio(summary[key + ' whole'])} |"
            )
    if "daemon" in runs:
        rs = runs["daemon"]
        extra = rs[-1].extra
        ratios = [r.rss_fill_peak / r.rss_steady for r in rs]
        lines += [
            "",
            f"Daemon: {extra.get('models')} models, {extra.get('detectors')} detectors, "
            f"{extra.get('transitions')} health transitions. Its RSS, peak sampled while "
            f"references fill over the RSS at the steady state's end: "
            + ", ".join(_ratio(x) for x in ratios)
            + f" (target <= 1.2); process peak {_rate(extra.get('peak_rss_mib') or math.nan)} MiB.",
        ]
    return lines


def _verdict(value: float, target: float, at_most: bool = False) -> str:
    """``met`` or ``missed`` for ``value`` against ``target`` (``-``: not measured)."""
    if math.isnan(value):
        return "not measured"
    return "met" if (value <= target if at_most else value >= target) else "missed"


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:,.0f} ms"


def render_latency(cfg: BenchConfig, latency: dict[str, Any]) -> list[str]:
    """The latency section: how it was measured, the figures, the target and its verdict."""
    tuning = kafka_tuning(cfg.policy)
    drain = latency["drain_s"]
    kept_up = (
        "never committed every record within 60 s of the producer's end: it fell behind"
        if math.isnan(drain)
        else f"had committed every record {drain:.1f} s after the producer's end"
    )
    # A breach missed (no flag before the next one) is a latency past the target, not a skip;
    # the target is at 50k events/s reached, not asked.
    if latency["produced_per_s"] < LATENCY_TARGET_RATE * 0.98:
        verdict = f"not measured at {LATENCY_TARGET_RATE:,} events/s"
    elif latency["missed"] == 0 and latency["p99_s"] <= 1.0:
        verdict = "met"
    else:
        verdict = "missed"
    return [
        "## Latency",
        "",
        f"A producer process paced at {cfg.latency_rate:,} events/s for "
        f"{cfg.latency_seconds:.0f} s reached **{latency['produced_per_s']:,.0f} events/s** "
        f"({latency['produced']:,} events; at most {latency['producer_max_behind_s']:.2f} s "
        f"behind its schedule), {max(cfg.models):,} models and `{INCIDENT_MODEL}` (1 event in "
        f"{INCIDENT_SHARE}); `driftwarden run` in its own process, policy `{cfg.policy.name}`, "
        "`kafka` settings "
        + ("the defaults" if not tuning else f"the defaults but {tuning}")
        + f", flagd file backend. The incident model's errors surge for {cfg.latency_surge:g} s "
        f"every {cfg.latency_period:g} s, the first {cfg.latency_warmup:g} s in: "
        f"**{latency['incidents']} breaches** (p99 of fewer than 20 is their max). Latency: from "
        "the produce time of the first breaching event (the incident model's events replayed "
        "through the same detector and thresholds) to the flag file write seen by a watcher "
        "polling it every 5 ms. The daemon " + kept_up + ".",
        "",
        "| breaches | p50 | p99 | max | missed | p99 to the audit entry | target |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {latency['incidents']} | {_ms(latency['p50_s'])} | {_ms(latency['p99_s'])} | "
        f"{_ms(latency['max_s'])} | {latency['missed']} | {_ms(latency['audit_p99_s'])} | "
        f"p99 <= 1 s at {LATENCY_TARGET_RATE:,} events/s: **{verdict}** |",
    ]


def render_memory(memory: dict[str, Any]) -> list[str]:
    """The memory section: the fill run's peak over its steady RSS, and the leak check."""
    lines = [
        "## Memory",
        "",
        "The engine alone (no broker), fed the bench's events "
        f"({MEMORY_NUMERIC} numeric features, 2 categorical) in batches of the daemon's "
        f"`max_poll_records` ({memory['default'].get('batch', '-')}), a tick after each 100k "
        "as the daemon ticks once a second; each run in a fresh process, RSS after a "
        "`gc.collect()` every million events, the peak from `getrusage`.",
    ]
    for key, title in (
        ("default", "references filling"),
        ("leak", "leak check: every reference full before the first sample"),
    ):
        m = memory[key]
        rss = m["rss_mib"]
        lines += [
            "",
            f"`{m['policy']}`, {m['models']:,} models, {m['detectors']:,} detectors "
            f"({m['detectors'] / max(1, m['models']):.0f} per model), {title} "
            f"({m['seconds']:.0f} s):",
            "",
            "| events | " + " | ".join(f"{k / 1e6:g}M" for k in sorted(rss)) + " |",
            "| --- |" + " ---: |" * len(rss),
            "| RSS MiB | " + " | ".join(f"{rss[k]:,.0f}" for k in sorted(rss)) + " |",
            "| references full | " + " | ".join(f"{m['full'][k]:.0%}" for k in sorted(rss)) + " |",
            "",
        ]
        if key == "default":
            ratio = m["fill_peak_ratio"]
            lines.append(
                f"Peak RSS {m['peak_rss_mib']:,.0f} MiB over the steady-state "
                f"{_rate(m['steady_rss_mib'])} MiB (every reference full): {_ratio(ratio)}x "
                f"(target <= 1.2x: **{_verdict(ratio, 1.2, at_most=True)}**)."
            )
        else:
            growth = m["growth_1m_to_end"]
            ok = m["full_at_1m"] >= 1.0
            verdict = _verdict(abs(growth), 0.05, at_most=True) if ok else "not measured"
            lines.append(
                f"RSS from {LEAK_FROM / 1e6:g}M to {max(rss) / 1e6:g}M events: "
                f"{growth * 100:+.1f}% (target within 5%: **{verdict}**"
                + ("" if ok else ": some reference was still filling at the first sample")
                + ")."
            )
    return lines


def render_group(stream: Stream, group: dict[str, list[Run]]) -> list[str]:
    """The two-process section: each contender's runs, the steady-state ratio and its target."""
    lines = [
        "## Two processes, one consumer group",
        "",
        f"The {stream.models:,} models' topic above ({stream.total:,} events), its steady "
        "marks; two worker processes of a kind in one group, (a2) and (b2) interleaved; the "
        "steady state on the two processes' merged offsets.",
        "",
        "| contender | steady events/s (median) | steady runs | whole run events/s | records "
        "per process |",
        "| --- | ---: | --- | ---: | --- |",
    ]
    for rs in group.values():
        lines.append(
            f"| {rs[-1].name} | {_rate(_median(r.steady_rate for r in rs))} | "
            + ", ".join(_rate(r.steady_rate) for r in rs)
            + f" | {_rate(_median(r.rate for r in rs))} | {rs[-1].extra.get('split')} |"
        )
    if "bare" in group and "daemon" in group:
        steady, whole = group_ratios(group)
        lines.append(
            f"\n(b2)/(a2) = {_ratio(steady)} in steady state (target >= 0.7: "
            f"**{_verdict(steady, 0.7)}**), {_ratio(whole)} over the whole run."
        )
    return lines


def group_ratios(group: dict[str, list[Run]]) -> tuple[float, float]:
    """(b2)/(a2) on the medians: steady state, whole run."""
    daemon, bare = group["daemon"], group["bare"]
    steady = _median(r.steady_rate for r in daemon) / _median(r.steady_rate for r in bare)
    return steady, _median(r.rate for r in daemon) / _median(r.rate for r in bare)


def render(
    cfg: BenchConfig,
    sets: list[dict[str, Any]],
    group: dict[str, list[Run]],
    latency: dict[str, Any] | None,
    memory: dict[str, Any] | None,
) -> str:
    tuning = kafka_tuning(cfg.policy)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Throughput{(' - ' + cfg.label) if cfg.label else ''}",
        "",
        f"`{cfg.command()}`, {now}, commit `{_commit()}`. {cfg.partitions} partitions on one "
        f"embedded Tansu broker; {os.cpu_count()} cores shared by the broker and the "
        f"contender running. Policy `{cfg.policy.name}`; `kafka` settings: "
        + ("the defaults" if not tuning else f"the defaults but {tuning}")
        + " (the bench sets broker, topic, group and `auto_offset_reset: earliest`). Each "
        "contender runs in a fresh process, one after the other on the same topic, (a), (b), "
        f"(c) interleaved {cfg.repeats} time(s); medians. Rates come from the offsets each has "
        "committed after each batch (the daemon's: those it marked applied), batch by batch, "
        "each timed from the commit before it: a **steady** batch holds only records past "
        "their partition's steady mark (every model of the partition has its references and "
        f"windows full) and ends before {STEADY_END:.0%} of the stream; a **fill** batch holds "
        "some record before its mark; batches past the steady ones are left out (the tail). "
        "Per batch, not between two instants: the bare and the River loops read one partition "
        "far ahead of the others, so no one instant puts every partition past its mark. "
        "**Whole run**: first record to last commit.",
    ]
    for entry in sets:
        lines += ["", *render_set(entry)]
    if group:
        lines += ["", *render_group(sets[0]["stream"], group)]
    if latency:
        lines += ["", *render_latency(cfg, latency)]
    if memory:
        lines += ["", *render_memory(memory)]
    return "\n".join(lines) + "\n"


def kept_part(out: Path) -> str:
    """What the report file holds from its ``## Before`` heading on (older figures)."""
    if not out.exists():
        return ""
    text = out.read_text()
    at = text.find("\n" + BEFORE_HEADING)
    return "" if at < 0 else text[at:]


def write_report(cfg: BenchConfig, text: str) -> None:
    """``text`` to ``cfg.out`` (if any), followed by what it kept from its ``## Before`` on."""
    if cfg.out is not None:
        kept = kept_part(cfg.out)
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(text + kept)


async def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """The whole bench on a fresh embedded broker; returns the figures and the markdown."""
    sizes = cfg.sets()
    tag = f"{os.getpid()}-{time.monotonic_ns() % 10**9}"
    sets: list[dict[str, Any]] = []
    group: dict[str, list[Run]] = {}
    latency: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(log_path=Path(tmp) / "tansu.log")
        await broker.start()
        try:
            bootstrap = broker.bootstrap_servers
            for n_models, n_events in sizes:
                need = steady_need(cfg.policy, n_models)
                stream = await load_topic(
                    bootstrap, f"bench-{tag}-{n_models}", n_events, n_models, cfg.partitions, need
                )
                print(
                    f"{n_models} models: loaded {n_events:,} events in {stream.load_s:.1f} s: "
                    f"{stream.counts}; steady mark {stream.fill} ({need} events per model)",
                    flush=True,
                )
                runs: dict[str, list[Run]] = {kind: [] for kind in NAMES}
                entry: dict[str, Any] = {"stream": stream, "runs": runs, "summary": {}}
                sets.append(entry)
                for rep in range(cfg.repeats):
                    for kind in NAMES:
                        run = await measure_one(
                            kind, bootstrap, stream, cfg, f"{tag}-{n_models}-{rep}"
                        )
                        runs[kind].append(run)
                        print(
                            f"{run.name}: steady {_rate(run.steady_rate)}, fill "
                            f"{_rate(run.fill_rate)}, whole {_rate(run.rate)} events/s "
                            f"({run.seconds:.2f} s)",
                            flush=True,
                        )
                    entry["summary"] = summarise(runs)
                    # Written after each repeat: a long run stopped later keeps what it has.
                    write_report(cfg, render(cfg, sets, {}, None, None))
                print(
                    "ratios: "
                    + ", ".join(f"{k} = {v:.2f}" for k, v in entry["summary"].items() if "/" in k),
                    flush=True,
                )
            if cfg.two_process:
                for rep in range(cfg.repeats):
                    for kind in ("bare", "daemon"):
                        r = await measure_group(
                            kind, bootstrap, sets[0]["stream"], cfg, f"{tag}-{rep}"
                        )
                        group.setdefault(kind, []).append(r)
                        print(
                            f"{r.name}: steady {_rate(r.steady_rate)}, whole {_rate(r.rate)} "
                            f"events/s {r.extra['split']}",
                            flush=True,
                        )
            latency = await measure_latency(bootstrap, cfg, tag) if cfg.latency else None
            if latency:
                print(f"latency: {latency}", flush=True)
        finally:
            await broker.stop()
    memory: dict[str, Any] | None = None
    if cfg.memory:
        # The policy's references: the peak while they fill, and the RSS once all are full.
        # Leak check: references of 500, full within the first million events.
        n_models = max(cfg.models)
        events = cfg.memory_events or memory_events(cfg.memory_policy, n_models)
        # Both at once, each in its own process: resident sizes, not rates, are measured.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            fill = pool.submit(measure_memory, cfg.memory_policy, events, n_models)
            leak = pool.submit(
                measure_memory,
                cfg.memory_policy,
                cfg.leak_events,
                leak_models(cfg.memory_policy, n_models),
            )
            memory = {"default": fill.result(), "leak": leak.result()}
        print(f"memory: {memory}", flush=True)
    text = render(cfg, sets, group, latency, memory)
    write_report(cfg, text)
    return {"sets": sets, "group": group, "latency": latency, "memory": memory, "markdown": text}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        return _worker_main(argv[1:])
    if argv and argv[0] == "memory":
        return _memory_main(argv[1:])
    if argv and argv[0] == "producer":
        return _producer_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__)
    defaults = BenchConfig()
    parser.add_argument(
        "--models", type=int, nargs="+", default=list(defaults.models), help="model counts"
    )
    parser.add_argument(
        "--events",
        type=int,
        nargs="+",
        default=list(defaults.events),
        help="events: one count for every model count, or one per model count",
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="interleaved repeats")
    parser.add_argument(
        "--policy", type=Path, default=STEADY_POLICY, help=f"e.g. {AUTO_POLICY.relative_to(ROOT)}"
    )
    parser.add_argument("--two-process", action="store_true", help="also 2 consumers, 1 group")
    parser.add_argument(
        "--latency",
        action="store_true",
        help="also breach-to-flag latency (producer and daemon in their own processes)",
    )
    parser.add_argument("--latency-rate", type=int, default=50_000)
    parser.add_argument("--latency-seconds", type=float, default=defaults.latency_seconds)
    parser.add_argument("--latency-period", type=float, default=3.0, help="s between surges")
    parser.add_argument("--latency-surge", type=float, default=0.5, help="s of errors")
    parser.add_argument(
        "--latency-warmup", type=float, default=5.0, help="s at the rate before the first surge"
    )
    parser.add_argument(
        "--memory", action="store_true", help="also RSS while references fill and once full"
    )
    parser.add_argument("--memory-policy", type=Path, default=MEMORY_POLICY)
    parser.add_argument(
        "--memory-events", type=int, default=0, help="0: enough for every reference to fill"
    )
    parser.add_argument("--leak-events", type=int, default=10_000_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "throughput.md")
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = BenchConfig(
        models=tuple(args.models),
        events=tuple(args.events),
        partitions=args.partitions,
        repeats=args.repeats,
        policy=args.policy,
        two_process=args.two_process,
        latency=args.latency,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds,
        latency_period=args.latency_period,
        latency_surge=args.latency_surge,
        latency_warmup=args.latency_warmup,
        memory=args.memory,
        memory_policy=args.memory_policy,
        memory_events=args.memory_events,
        leak_events=args.leak_events,
        out=args.out,
        label=args.label,
    )
    try:
        cfg.sets()
        load_settings(cfg.policy)
    except (ValueError, ConfigError) as err:
        parser.error(str(err))
    result = asyncio.run(run_bench(cfg))
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
