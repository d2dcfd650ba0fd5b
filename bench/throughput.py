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
from collections.abc import Callable
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

from monitor.config.settings import Settings, load_settings  # noqa: E402
from monitor.daemon.daemon import Daemon  # noqa: E402
from monitor.daemon.runtime import tuned_runtime  # noqa: E402
from monitor.engine.events import Event  # noqa: E402
from monitor.observability.metrics import Metrics  # noqa: E402
from monitor.tools.embedded_broker import EmbeddedBroker, free_port  # noqa: E402
from monitor.tools.traffic import synthetic_batches, synthetic_models  # noqa: E402

__all__ = ["BenchConfig", "Run", "load_topic", "main", "run_bench"]

log = logging.getLogger(__name__)

BENCH_POLICY = ROOT / "bench" / "policy_bench.yaml"
RESULTS = ROOT / "bench" / "results"
#: The numeric features of the workload (``synthetic_batches``' default ten), which the
#: hand-written peer watches.
NUMERIC = [f"f{i}" for i in range(10)]


# ------------------------------------------------------------------------------- data


def partition_of(model_index: int, partitions: int) -> int:
    # Explicit, so each run knows exactly how many records each partition holds (Tansu's
    # ListOffsets answers the last batch's base offset, not the log end).
    return model_index % partitions


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
    names = [m.encode() for m in synthetic_models(n_models)]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1_000_000, acks=1
    )
    await producer.start()
    counts = dict.fromkeys(range(partitions), 0)
    try:
        pending = []
        for idx, values in synthetic_batches(n, n_models):
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
    latency_seconds: float = 60.0
    latency_period: float = 3.0
    latency_surge: float = 0.5
    latency_warmup: float = 5.0
    memory: bool = False
    memory_events: int = 11_000_000
    leak_events: int = 10_000_000
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
                for _ in range(max(0, due)):
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
    data["kafka"].update(
        bootstrap_servers=bootstrap,
        topics=[topic],
        group_id=f"latency-{tag}",
        dead_letter_topic=f"{topic}-dlq",
        review_topic=f"{topic}-review",
    )
    data["http"]["port"] = free_port()
    data["flags"] = {"type": "flagd_file", "path": str(flags)}
    data["actions"] = {"audit_log": str(audit)}
    data["alerts"] = {"sinks": []}
    data["models"][INCIDENT_MODEL] = INCIDENT_POLICY
    config = tmp / "policy.yaml"
    config.write_text(yaml.safe_dump(data))
    settings = load_settings(config)
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
            str(cfg.models),
            str(cfg.latency_period),
            str(cfg.latency_surge),
            str(cfg.partitions),
            str(cfg.latency_warmup),
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        out, _ = await asyncio.wait_for(producer.communicate(), cfg.latency_seconds + 120)
        report = json.loads(out.decode().strip().splitlines()[-1])
        completions = breach_completions(report["incident"], settings)

        def applied() -> list[float]:
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

        await _until(lambda: len(applied()) >= len(completions), 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            daemon.send_signal(signal.SIGTERM)
        await asyncio.wait_for(daemon.wait(), 60)
    writes = applied()
    latencies = []
    for i, done in enumerate(completions):
        until = completions[i + 1] if i + 1 < len(completions) else math.inf
        match = [at for at in writes if done <= at < until]
        latencies.append(match[0] - done if match else math.nan)
    arr = np.array(latencies)
    ok = arr[~np.isnan(arr)]
    return {
        "produced_per_s": report["rate"],
        "producer_max_behind_s": report["max_behind_s"],
        "incidents": len(completions),
        "flag_writes": len(writes),
        "missed": int(np.isnan(arr).sum()),
        "latencies_s": latencies,
        "p50_s": float(np.quantile(ok, 0.5)) if ok.size else math.nan,
        "p99_s": float(np.quantile(ok, 0.99)) if ok.size else math.nan,
        "max_s": float(ok.max()) if ok.size else math.nan,
    }


# ------------------------------------------------------------------------------- memory


MEMORY_POLICY = ROOT / "bench" / "policy_memory.yaml"
#: Numeric features per event in the memory runs (``policy_memory.yaml`` watches 14).
MEMORY_NUMERIC = 14


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
    samples: dict[int, float] = {}
    full: dict[int, float] = {}
    done = 0
    now = time.time()
    base = rss_mib()
    started = time.perf_counter()
    with tuned_runtime():  # as in the daemon
        for _, values in synthetic_batches(
            events, n_models, seed=5, chunk=100_000, n_numeric=MEMORY_NUMERIC
        ):
            engine.apply([decode(v) for v in values], now)
            engine.tick(now)  # the daemon's once-a-second tick (one chunk is one second here)
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
        "rss_mib": samples,
        "full": full,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(report), flush=True)
    return 0


def measure_memory(policy: Path, events: int, n_models: int, reference: int = 0) -> dict[str, Any]:
    """Run ``_memory_main`` in a fresh process; return its report with the 1M -> end growth."""
    import subprocess

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
    first = rss.get(1_000_000, math.nan)
    report["growth_1m_to_end"] = (rss[max(rss)] - first) / first
    return report


# ------------------------------------------------------------------------------- report


def render(
    cfg: BenchConfig,
    runs: dict[str, list[Run]],
    summary: dict[str, float],
    group: dict[str, Run],
    latency: dict[str, Any] | None,
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
            f"Producer process at {latency['produced_per_s']:,.0f} events/s (asked "
            f"{cfg.latency_rate:,}) for {cfg.latency_seconds:.0f} s; `driftwarden run` in its "
            f"own process, flagd file backend; {latency['incidents']} error surges of one model, "
            f"the first {cfg.latency_warmup:.0f} s in (sustained rate, not the cold start). "
            "Breach completion to the `flag_applied` audit entry: "
            f"p50 {latency['p50_s'] * 1000:.0f} ms, p99 {latency['p99_s'] * 1000:.0f} ms, "
            f"max {latency['max_s'] * 1000:.0f} ms, {latency['missed']} missed "
            "(target p99 <= 1 s).",
        ]
    if memory:
        lines += ["", "## Memory", ""]
        for key, title in (
            ("default", "default references (10,000 values)"),
            ("leak", "leak check, references of 500"),
        ):
            m = memory[key]
            rss = m["rss_mib"]
            lines += [
                f"Engine alone (no broker), {m['models']} models x "
                f"{m['detectors'] // max(1, m['models'])} detectors, {title}:",
                "",
                "| events | RSS MiB | references full |",
                "| ---: | ---: | ---: |",
            ]
            lines += [f"| {k:,} | {v:,.0f} | {m['full'][k]:.0%} |" for k, v in sorted(rss.items())]
            lines.append(
                f"\nGrowth from 1M to {max(rss):,} events: {m['growth_1m_to_end'] * 100:+.1f}%; "
                f"peak RSS {m['peak_rss_mib']:,.0f} MiB.\n"
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
    memory: dict[str, Any] | None = None
    if cfg.memory:
        # Default references (10,000 values): resident size once every reference is full.
        # Leak check: references of 500, full within the first million events.
        memory = {
            "default": measure_memory(MEMORY_POLICY, cfg.memory_events, cfg.models),
            "leak": measure_memory(MEMORY_POLICY, cfg.leak_events, cfg.models, reference=500),
        }
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
    if argv and argv[0] == "memory":
        return _memory_main(argv[1:])
    if argv and argv[0] == "producer":
        return _producer_main(argv[1:])
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
        help="also breach-to-flag latency (producer and daemon in their own processes)",
    )
    parser.add_argument("--latency-rate", type=int, default=50_000)
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--latency-period", type=float, default=3.0, help="s between surges")
    parser.add_argument("--latency-surge", type=float, default=0.5, help="s of errors")
    parser.add_argument(
        "--latency-warmup", type=float, default=5.0, help="s at the rate before the first surge"
    )
    parser.add_argument("--memory", action="store_true", help="also RSS with full references")
    parser.add_argument("--memory-events", type=int, default=11_000_000)
    parser.add_argument("--leak-events", type=int, default=10_000_000)
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
        latency_period=args.latency_period,
        latency_surge=args.latency_surge,
        latency_warmup=args.latency_warmup,
        memory_events=args.memory_events,
        leak_events=args.leak_events,
        out=args.out,
        label=args.label,
    )
    result = asyncio.run(run_bench(cfg))
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
