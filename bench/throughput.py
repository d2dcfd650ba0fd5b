"""Throughput bench: a bare consumer (the ceiling), driftwarden end to end and a hand-written
River peer, side by side on one Tansu broker and one loaded topic; plus latency and memory.

Run ``python bench/throughput.py --help``; ``python bench/throughput.py`` is the full run
(2M events, 1,000 models). Results go to ``bench/results/throughput.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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

from monitor.daemon import Daemon  # noqa: E402
from monitor.embedded_broker import EmbeddedBroker, free_port  # noqa: E402
from monitor.events import Event  # noqa: E402
from monitor.metrics import Metrics  # noqa: E402
from monitor.settings import Settings, load_settings  # noqa: E402

__all__ = ["BenchConfig", "Run", "load_topic", "main", "run_bench"]

log = logging.getLogger(__name__)

BENCH_POLICY = ROOT / "bench" / "policy_bench.yaml"
RESULTS = ROOT / "bench" / "results"
NUMERIC = [f"f{i}" for i in range(10)]
CATEGORIES = {"c0": [f"a{i}" for i in range(5)], "c1": [f"b{i}" for i in range(20)]}


# ------------------------------------------------------------------------------- data


def models_of(n_models: int) -> list[str]:
    return [f"model-{i:04d}" for i in range(n_models)]


def partition_of(model_index: int, partitions: int) -> int:
    # Explicit, so each run knows exactly how many records each partition holds (Tansu's
    # ListOffsets answers the last batch's base offset, not the log end).
    return model_index % partitions


def generate(
    n: int, n_models: int, seed: int = 7, chunk: int = 50_000
) -> Iterator[tuple[np.ndarray, list[bytes]]]:
    """Chunks of (model index per event, encoded v1 events): steady traffic per model."""
    rng = np.random.default_rng(seed)
    names = models_of(n_models)
    centres = rng.normal(0.0, 3.0, size=(n_models, len(NUMERIC)))
    encode = msgspec.json.Encoder().encode
    done = 0
    while done < n:
        k = min(chunk, n - done)
        idx = rng.integers(0, n_models, size=k)
        feats = centres[idx] + rng.normal(size=(k, len(NUMERIC)))
        c0 = rng.integers(0, 5, size=k)
        c1 = rng.integers(0, 20, size=k)
        pred = 1.0 / (1.0 + np.exp(-feats[:, 0]))
        conf = rng.uniform(0.5, 1.0, size=k)
        lat = rng.lognormal(3.0, 0.4, size=k)
        err = rng.random(k) < 0.01
        feats_l = np.round(feats, 4).tolist()
        pred_l, conf_l, lat_l = pred.tolist(), conf.tolist(), np.round(lat, 2).tolist()
        c0_l, c1_l, err_l = c0.tolist(), c1.tolist(), err.tolist()
        values = []
        for j in range(k):
            features: dict[str, Any] = dict(zip(NUMERIC, feats_l[j], strict=True))
            features["c0"] = CATEGORIES["c0"][c0_l[j]]
            features["c1"] = CATEGORIES["c1"][c1_l[j]]
            values.append(
                encode(
                    {
                        "model": names[idx[j]],
                        "features": features,
                        "prediction": pred_l[j],
                        "confidence": conf_l[j],
                        "latency_ms": lat_l[j],
                        "error": err_l[j],
                    }
                )
            )
        done += k
        yield idx, values


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication_factor=1)])
    finally:
        await admin.close()


async def load_topic(
    bootstrap: str, topic: str, n: int, n_models: int, partitions: int
) -> dict[int, int]:
    """Produce ``n`` events in big batches; return the record count of each partition."""
    await create_topic(bootstrap, topic, partitions)
    names = [m.encode() for m in models_of(n_models)]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1_000_000, acks=1
    )
    await producer.start()
    counts = dict.fromkeys(range(partitions), 0)
    try:
        pending = []
        for idx, values in generate(n, n_models):
            batches = {p: producer.create_batch() for p in range(partitions)}
            for i, value in zip(idx.tolist(), values, strict=True):
                p = partition_of(i, partitions)
                batch = batches[p]
                if batch.append(key=names[i], value=value, timestamp=None) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=p))
                    batch = batches[p] = producer.create_batch()
                    batch.append(key=names[i], value=value, timestamp=None)
                counts[p] += 1
            for p, batch in batches.items():
                if batch.record_count():
                    pending.append(await producer.send_batch(batch, topic, partition=p))
            if len(pending) > 64:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return counts


# ------------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One measured consumer run."""

    name: str
    events: int
    seconds: float
    rss_mib: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.nan


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
) -> tuple[int, float, float]:
    """Consume with manual commits after each batch until every expected offset is
    committed (or ``stop`` is set); return (records, first-record time, last-commit time).
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


def bench_settings(bootstrap: str, topic: str, group: str, policy: Path) -> Settings:
    settings = load_settings(policy)
    settings.kafka.bootstrap_servers = bootstrap
    settings.kafka.topics = [topic]
    settings.kafka.group_id = group
    settings.kafka.dead_letter_topic = f"{topic}-dlq"
    settings.kafka.review_topic = f"{topic}-review"
    settings.http.port = free_port()
    return settings


async def run_daemon(
    settings: Settings, expected: dict[int, int] | None, stop: asyncio.Event | None = None
) -> tuple[Daemon, int, float, float]:
    """The daemon in-process, from its first fetched record to its last committed offset
    (or until ``stop``); return (daemon, applied events, first time, last commit time)."""
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(settings, metrics=metrics)
    first: list[float] = []
    last = [math.nan]
    applied: dict[int, int] = {}
    finished = asyncio.Event()
    consumer = daemon.consumer
    fetch, commit, mark_applied = consumer.fetch, consumer.commit, consumer.mark_applied

    # Wrapped on the instance: the registry is not polled (collecting 16,000 signals' gauges
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


# ------------------------------------------------------------------------------- one process


@dataclass
class BenchConfig:
    events: int = 2_000_000
    models: int = 1000
    partitions: int = 4
    repeats: int = 1
    policy: Path = BENCH_POLICY
    two_process: bool = False
    latency: bool = False
    latency_rate: int = 50_000
    latency_seconds: float = 20.0
    memory: bool = False
    memory_events: int = 10_000_000
    out: Path | None = RESULTS / "throughput.md"
    label: str = ""


async def measure_one(
    kind: str, bootstrap: str, topic: str, expected: dict[int, int], cfg: BenchConfig, tag: str
) -> Run:
    settings = bench_settings(bootstrap, topic, f"{kind}-{tag}", cfg.policy)
    total = sum(expected.values())
    gc.collect()
    if kind == "bare":
        n, t0, t1 = await _consume(
            bootstrap, topic, f"bare-{tag}", expected, settings, bare_handler()
        )
        return Run("(a) bare aiokafka + msgspec decode", n, t1 - t0, rss_mib())
    if kind == "peer":
        peer = RiverPeer()
        n, t0, t1 = await _consume(bootstrap, topic, f"peer-{tag}", expected, settings, peer.handle)
        run = Run("(c) hand-written orjson + River per event", n, t1 - t0, rss_mib())
        run.extra["drifts"] = peer.drifts
        del peer
        return run
    daemon, n, t0, t1 = await run_daemon(settings, expected)
    if n != total:
        raise RuntimeError(f"daemon applied {n} events, expected {total}")
    run = Run("(b) driftwarden end to end", n, t1 - t0, rss_mib())
    run.extra["models"] = len(daemon.engine.models)
    run.extra["detectors"] = sum(
        len(s.members) for m in daemon.engine.models.values() for s in m.signals
    )
    run.extra["transitions"] = int(
        sum(
            s.value
            for metric in daemon.metrics.registry.collect()
            if metric.name == "driftwarden_health_transitions"
            for s in metric.samples
            if s.name.endswith("_total")
        )
    )
    del daemon
    return run


def summarise(runs: dict[str, list[Run]]) -> dict[str, float]:
    """Median rate of each contender, and the ratios the issue sets targets on."""
    med = {k: float(np.median([r.rate for r in v])) for k, v in runs.items()}
    out = dict(med)
    if "bare" in med and "daemon" in med:
        out["b/a"] = med["daemon"] / med["bare"]
    if "peer" in med and "daemon" in med:
        out["b/c"] = med["daemon"] / med["peer"]
    if "peer" in med and "bare" in med:
        out["c/a"] = med["peer"] / med["bare"]
    return out


# ------------------------------------------------------------------------------- two processes


def _worker_main(argv: list[str]) -> int:
    """``throughput.py worker KIND BOOTSTRAP TOPIC GROUP POLICY``: consume until SIGTERM,
    then print one JSON line: records, first-record and last-commit wall times."""
    kind, bootstrap, topic, group, policy = argv

    async def go() -> dict[str, Any]:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        settings = bench_settings(bootstrap, topic, group, Path(policy))
        offset = time.time() - time.perf_counter()
        if kind == "bare":
            n, t0, t1 = await _consume(
                bootstrap, topic, group, None, settings, bare_handler(), stop
            )
        else:
            _, n, t0, t1 = await run_daemon(settings, None, stop)
        return {"records": n, "first": t0 + offset, "last": t1 + offset}

    print(json.dumps(asyncio.run(go())), flush=True)
    return 0


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
    kind: str, bootstrap: str, topic: str, expected: dict[int, int], cfg: BenchConfig, tag: str
) -> Run:
    """Two worker processes in one consumer group, from the first record either of them
    read to the last commit either of them made."""
    group = f"{kind}2-{tag}"
    total = sum(expected.values())
    args = [__file__, "worker", kind, bootstrap, topic, group, str(cfg.policy)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=asyncio.subprocess.PIPE, cwd=ROOT
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 600
        for _ in range(100_000):
            if await committed_total(bootstrap, group, topic, cfg.partitions) >= total:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"group {group} did not commit {total} records in 600 s")
            if any(p.returncode is not None for p in procs):
                raise RuntimeError(f"a {kind} worker died")
            await asyncio.sleep(0.5)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    reports = []
    for p in procs:
        out, _ = await asyncio.wait_for(p.communicate(), 90)
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    firsts = [r["first"] for r in reports if not math.isnan(r["first"])]
    lasts = [r["last"] for r in reports if not math.isnan(r["last"])]
    n = sum(r["records"] for r in reports)
    name = "(a2) 2 bare consumers, one group" if kind == "bare" else "(b2) 2 driftwarden, one group"
    return Run(name, n, max(lasts) - min(firsts), extra={"split": [r["records"] for r in reports]})


# ------------------------------------------------------------------------------- latency


async def _until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` every 50 ms for up to ``timeout_s``; return its last value."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.05) + 1):
        if condition() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return condition()


async def measure_latency(bootstrap: str, cfg: BenchConfig, tag: str) -> dict[str, float]:
    """Event age when its batch's health evaluation is done (the breach-to-transition
    bound: a transition is decided in the same ``engine.apply`` as the event completing
    the breach), at ``latency_rate`` events/s produced live, after a warm-up backlog."""
    topic = f"latency-{tag}"
    await create_topic(bootstrap, topic, cfg.partitions)
    settings = bench_settings(bootstrap, topic, f"latency-{tag}", cfg.policy)
    settings.kafka.auto_offset_reset = "latest"
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(settings, metrics=metrics)
    ages: list[np.ndarray] = []
    apply = daemon.engine.apply

    def timed_apply(events: Any, now: float) -> Any:
        out = apply(events, now)
        done = time.time()
        sent = np.fromiter((e.ts for e in events), dtype=np.float64, count=len(events))
        ages.append(done - sent)
        return out

    daemon.engine.apply = timed_apply  # type: ignore[method-assign]
    task = asyncio.create_task(daemon.run())
    await _until(lambda: daemon.consumer.assignment_received, 60)
    await asyncio.sleep(1.0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    await producer.start()
    names = [m.encode() for m in models_of(cfg.models)]
    rng = np.random.default_rng(3)
    encode = msgspec.json.Encoder().encode
    template = next(generate(20_000, cfg.models, seed=11))[1]
    decoded = [msgspec.json.decode(v) for v in template]
    sent = 0
    started = time.perf_counter()
    tick = 0.01
    try:
        while time.perf_counter() - started < cfg.latency_seconds:
            due = int((time.perf_counter() - started) * cfg.latency_rate) - sent
            now = time.time()
            for _ in range(max(0, due)):
                body = decoded[sent % len(decoded)]
                body["ts"] = now
                model = int(rng.integers(cfg.models))
                body["model"] = names[model].decode()
                await producer.send(topic, encode(body), key=names[model])
                sent += 1
            await asyncio.sleep(tick)
        await producer.flush()
        achieved = sent / (time.perf_counter() - started)
        await _until(lambda: daemon.applied_events >= sent, 30)
    finally:
        await producer.stop()
        daemon.request_stop("latency done")
        await asyncio.wait_for(task, 60)
    # The first two seconds include the group join and the producer warming up.
    all_ages = np.concatenate(ages) if ages else np.zeros(0)
    steady = all_ages[int(2 * cfg.latency_rate) :]
    return {
        "produced_per_s": achieved,
        "applied": float(daemon.applied_events),
        "p50_s": float(np.quantile(steady, 0.5)),
        "p99_s": float(np.quantile(steady, 0.99)),
        "max_s": float(steady.max()),
    }


# ------------------------------------------------------------------------------- memory


def measure_memory(cfg: BenchConfig) -> dict[str, Any]:
    """The engine alone (no broker: this is about resident state) fed ``memory_events``
    events of ``models`` models; RSS sampled every million events."""
    from monitor.engine import Engine

    settings = load_settings(cfg.policy)
    engine = Engine(settings.policy_for, max_models=settings.engine.max_models)
    decoder = msgspec.json.Decoder(list[Event])
    samples: dict[int, float] = {}
    done = 0
    now = time.time()
    base = rss_mib()
    batch_values: list[bytes] = []
    for _, values in generate(cfg.memory_events, cfg.models, seed=5, chunk=100_000):
        batch_values = values
        events = decoder.decode(b"[" + b",".join(batch_values) + b"]")
        engine.apply(events, now)
        done += len(events)
        now += 1.0
        if done % 1_000_000 == 0:
            gc.collect()
            samples[done] = rss_mib()
    detectors = sum(len(s.members) for m in engine.models.values() for s in m.signals)
    first = samples.get(1_000_000, math.nan)
    last = samples[max(samples)]
    return {
        "models": len(engine.models),
        "detectors": detectors,
        "baseline_mib": base,
        "rss_mib": samples,
        "growth_1m_to_end": (last - first) / first,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ------------------------------------------------------------------------------- report


def render(
    cfg: BenchConfig,
    runs: dict[str, list[Run]],
    summary: dict[str, float],
    group: dict[str, Run],
    latency: dict[str, float] | None,
    memory: dict[str, Any] | None,
    load_s: float,
) -> str:
    lines = [
        f"# Throughput{(' - ' + cfg.label) if cfg.label else ''}",
        "",
        f"`python bench/throughput.py --events {cfg.events} --models {cfg.models} "
        f"--repeats {cfg.repeats}`; {cfg.partitions} partitions on one embedded Tansu broker, "
        f"{os.cpu_count()} cores shared by broker and consumer; policy `{cfg.policy.name}`. "
        f"Loading took {load_s:.1f} s. Each rate is from the first record read to the last "
        "offset committed; contenders run one after the other on the same topic, "
        "interleaved when repeated; the median is reported.",
        "",
        "| contender | events/s (median) | runs | RSS MiB |",
        "| --- | ---: | --- | ---: |",
    ]
    for kind in ("bare", "daemon", "peer"):
        if kind in runs:
            rs = runs[kind]
            lines.append(
                f"| {rs[0].name} | {summary[kind]:,.0f} | "
                + ", ".join(f"{r.rate:,.0f}" for r in rs)
                + f" | {rs[-1].rss_mib:,.0f} |"
            )
    lines += ["", "| ratio | value | target |", "| --- | ---: | --- |"]
    for key, target in (("b/a", ">= 0.7"), ("b/c", ">= 1.5"), ("c/a", "(about 0.47)")):
        if key in summary:
            lines.append(f"| ({key[0]})/({key[2]}) | {summary[key]:.2f} | {target} |")
    if "daemon" in runs:
        extra = runs["daemon"][-1].extra
        lines += [
            "",
            f"Daemon: {extra.get('models')} models, {extra.get('detectors')} detectors, "
            f"{extra.get('transitions')} health transitions.",
        ]
    if group:
        lines += ["", "## Two processes, one consumer group", ""]
        lines += ["| contender | events/s | records per process |", "| --- | ---: | --- |"]
        for r in group.values():
            lines.append(f"| {r.name} | {r.rate:,.0f} | {r.extra.get('split')} |")
        if "bare" in group and "daemon" in group:
            ratio = group["daemon"].rate / group["bare"].rate
            lines.append(f"\n(b2)/(a2) = {ratio:.2f} (target >= 0.7)")
    if latency:
        lines += [
            "",
            "## Latency",
            "",
            f"Produced {latency['produced_per_s']:,.0f} events/s live for "
            f"{cfg.latency_seconds:.0f} s; age of each event when the health evaluation of its "
            "batch was done (the breach-to-transition bound): "
            f"p50 {latency['p50_s'] * 1000:.0f} ms, p99 {latency['p99_s'] * 1000:.0f} ms, "
            f"max {latency['max_s'] * 1000:.0f} ms (target p99 <= 1 s).",
        ]
    if memory:
        rss = memory["rss_mib"]
        lines += [
            "",
            "## Memory",
            "",
            f"Engine alone, {memory['models']} models x "
            f"{memory['detectors'] // max(1, memory['models'])} detectors "
            f"({memory['detectors']} in all); RSS by events applied:",
            "",
            "| events | RSS MiB |",
            "| ---: | ---: |",
        ]
        lines += [f"| {k:,} | {v:,.0f} |" for k, v in sorted(rss.items())]
        lines.append(
            f"\nGrowth from 1M to {max(rss):,} events: {memory['growth_1m_to_end'] * 100:+.1f}% "
            f"(target within 5%); peak RSS {memory['peak_rss_mib']:,.0f} MiB (target < 1024)."
        )
    return "\n".join(lines) + "\n"


async def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """The whole bench on a fresh embedded broker; returns the figures and the markdown."""
    tag = f"{os.getpid()}-{time.monotonic_ns() % 10**9}"
    topic = f"bench-{tag}"
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(log_path=Path(tmp) / "tansu.log")
        await broker.start()
        try:
            bootstrap = broker.bootstrap_servers
            started = time.perf_counter()
            expected = await load_topic(bootstrap, topic, cfg.events, cfg.models, cfg.partitions)
            load_s = time.perf_counter() - started
            print(f"loaded {cfg.events:,} events in {load_s:.1f} s: {expected}", flush=True)
            runs: dict[str, list[Run]] = {"bare": [], "daemon": [], "peer": []}
            for rep in range(cfg.repeats):
                for kind in ("bare", "daemon", "peer"):
                    run = await measure_one(kind, bootstrap, topic, expected, cfg, f"{tag}-{rep}")
                    runs[kind].append(run)
                    print(f"{run.name}: {run.rate:,.0f} events/s ({run.seconds:.2f} s)", flush=True)
            summary = summarise(runs)
            print(
                "ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in summary.items() if "/" in k),
                flush=True,
            )
            group: dict[str, Run] = {}
            if cfg.two_process:
                for kind in ("bare", "daemon"):
                    group[kind] = await measure_group(kind, bootstrap, topic, expected, cfg, tag)
                    r = group[kind]
                    print(f"{r.name}: {r.rate:,.0f} events/s {r.extra['split']}", flush=True)
            latency = await measure_latency(bootstrap, cfg, tag) if cfg.latency else None
            if latency:
                print(f"latency: {latency}", flush=True)
        finally:
            await broker.stop()
    memory = measure_memory(cfg) if cfg.memory else None
    if memory:
        print(f"memory: {memory}", flush=True)
    text = render(cfg, runs, summary, group, latency, memory, load_s)
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(text)
    return {
        "runs": runs,
        "summary": summary,
        "group": group,
        "latency": latency,
        "memory": memory,
        "markdown": text,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        return _worker_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats of a, b, c")
    parser.add_argument("--policy", type=Path, default=BENCH_POLICY)
    parser.add_argument("--two-process", action="store_true", help="also 2 consumers, 1 group")
    parser.add_argument(
        "--latency",
        action="store_true",
        help="also breach latency (experimental: producer in-process)",
    )
    parser.add_argument("--latency-rate", type=int, default=50_000)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--memory", action="store_true", help="also RSS from 1M to N events")
    parser.add_argument("--memory-events", type=int, default=10_000_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "throughput.md")
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = BenchConfig(
        events=args.events,
        models=args.models,
        partitions=args.partitions,
        repeats=args.repeats,
        policy=args.policy,
        two_process=args.two_process,
        latency=args.latency,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds,
        memory=args.memory,
        memory_events=args.memory_events,
        out=args.out,
        label=args.label,
    )
    result = asyncio.run(run_bench(cfg))
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
