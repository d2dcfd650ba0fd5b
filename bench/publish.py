"""Publish bench: what /metrics and /status cost at 1,000 models x 14 signals, before (every
series rendered by prometheus_client, every model described and encoded per request) and
after (per-model text and JSON kept, rebuilt for what changed), and the engine's throughput
while a scraper in its own process reads /metrics and /status every second, side by side.

Run: ``python bench/publish.py [--models 1000 --seconds 8 --repeats 3]``. Prints a markdown
report (``bench/results/publish.md`` holds one). The harness is the daemon's batch step
without Kafka (engine, publisher, HTTP server in one event loop): what a scrape takes from the
loop shows as events/s lost.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.config.policy import ModelPolicy
from monitor.engine.engine import Engine
from monitor.engine.events import Event
from monitor.http.server import Exposition, HttpServer
from monitor.observability.metrics import Metrics
from monitor.observability.model_status import ModelStatus, status_json
from monitor.observability.publisher import SeriesPublisher

NUMERIC = [f"f{i}" for i in range(10)]


def policy(reference: int) -> ModelPolicy:
    """bench/policy_steady.yaml's 14 signals (10 features as one family, prediction,
    confidence, p99 latency, error rate), with references of ``reference`` events."""
    ref = {"reference": {"size": reference}}
    return ModelPolicy.model_validate(
        {
            "mode": "enforce",
            "signals": [
                {"name": "features", "source": "features", "features": NUMERIC, "level": "warn",
                 "detector": {"type": "ks_window", **ref}},
                {"name": "prediction", "source": "prediction", "level": "warn",
                 "detector": {"type": "ks_window", **ref}},
                {"name": "confidence", "source": "confidence", "level": "warn",
                 "detector": {"type": "ks_window", **ref}},
                {"name": "latency_ms", "source": "latency_ms", "level": "degraded",
                 "detector": {"type": "quantile", "q": 0.99, **ref}},
                {"name": "error", "source": "error", "level": "degraded",
                 "detector": {"type": "rate_window", **ref}},
            ],
        }
    )  # fmt: skip


def batches(models: list[str], per_model: int, count: int, seed: int = 7) -> list[list[Event]]:
    """``count`` batches, each with ``per_model`` events of every model, models interleaved."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(count):
        n = len(models) * per_model
        feats = rng.normal(size=(n, 10))
        pred = rng.random(n)
        conf = rng.random(n)
        lat = rng.lognormal(3.0, 0.3, n)
        err = rng.random(n) < 0.01
        out.append(
            [
                Event(
                    model=models[i % len(models)],
                    request_id=f"{b}-{i}",
                    features=dict(zip(NUMERIC, feats[i].tolist(), strict=True)),
                    prediction=float(pred[i]),
                    confidence=float(conf[i]),
                    latency_ms=float(lat[i]),
                    error=bool(err[i]),
                )
                for i in range(n)
            ]
        )
    return out


class Harness:
    """One engine, its publisher and model status, an HTTP server: the daemon's side paths."""

    def __init__(self, n_models: int, reference: int) -> None:
        self.policy = policy(reference)
        self.engine = Engine(lambda model: self.policy, max_models=n_models + 10)
        self.metrics = Metrics.create(CollectorRegistry())
        self.publisher = SeriesPublisher(self.metrics, self.engine.models)
        self.model_status = ModelStatus(self.engine.models)
        self.models = [f"model-{i:05d}" for i in range(n_models)]
        self.now = 1_000_000.0
        #: "new": /status from the kept text; "old": every model described per request.
        self.status_mode = "new"

    def apply(self, events: list[Event]) -> None:
        self.now += 0.05
        for _ in self.engine.apply_stepwise(events, self.now):
            pass
        self.publisher.count_events(self.engine.received)
        self.publisher.publish(set(self.engine.changed))

    # the HTTP provider
    def health_problems(self) -> list[str]:
        return []

    def readiness_problems(self) -> list[str]:
        return []

    def status(self) -> dict[str, Any]:
        return {"version": "bench", "models": self.engine.snapshot(), "actions": {}}

    def status_json(self) -> str:
        if self.status_mode == "old":
            return json.dumps(self.status(), default=str, allow_nan=False)
        return status_json({"version": "bench"}, self.model_status, {"actions": {}})


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of ``repeats`` runs of ``fn()`` in seconds (the machine is shared: the least
    disturbed run), the cyclic collector paused as the server pauses it."""
    took = []
    for _ in range(repeats):
        gc.disable()
        started = time.perf_counter()
        fn()
        took.append(time.perf_counter() - started)
        gc.enable()
    return min(took)


def invalidate(publisher: SeriesPublisher, models: list[str]) -> None:
    """As if every detector of ``models`` tested since the last scrape."""
    for model in models:
        series = publisher._models[model]
        series.version += 1
        for member in series.members.values():
            member.lines = None


def costs(h: Harness, repeats: int, changed_counts: list[int]) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    exposition = Exposition(h.metrics.registry, h.metrics)
    series = sum(1 for line in generate_latest(h.metrics.registry).splitlines() if line[:1] != b"#")
    rows.append((f"series on /metrics ({len(h.models)} models)", series))
    rows.append(
        ("before: /metrics, generate_latest over the registry (ms)",
         1000 * timed(lambda: generate_latest(h.metrics.registry), repeats))
    )  # fmt: skip
    rows.append(
        ("after: /metrics, everything else (prometheus_client, Metrics.core) (ms)",
         1000 * timed(lambda: generate_latest(h.metrics.core), repeats))
    )  # fmt: skip
    for k in changed_counts:
        changed = h.models[:k]

        def scrape(changed: list[str] = changed) -> None:
            invalidate(h.publisher, changed)
            exposition._render()

        rows.append((f"after: /metrics, {k} models changed (every detector tested) (ms)",
                     1000 * timed(scrape, repeats)))  # fmt: skip
    rows.append(
        ("before: /status, describe + encode every model (ms)",
         1000 * timed(lambda: json.dumps(h.engine.snapshot(), default=str), repeats))
    )  # fmt: skip
    for k in changed_counts:
        changed = h.models[:k]

        def status(changed: list[str] = changed, tested: bool = True) -> None:
            for model in changed:
                entry = h.model_status._entries[model]
                entry.head = None  # its events moved
                if tested:  # and every detector tested: every signal's text rebuilt
                    entry.signals = []
            h.model_status.json()

        rows.append((f"after: /status, {k} models changed (every detector tested) (ms)",
                     1000 * timed(status, repeats)))  # fmt: skip
        if k:
            rows.append((f"after: /status, {k} models got events, no detector tested (ms)",
                         1000 * timed(lambda c=changed: status(c, False), repeats)))  # fmt: skip
    rows.append(
        ("tick: publish every model, nothing changed (ms)",
         1000 * timed(lambda: h.publisher.publish(set(h.engine.models)), repeats))
    )  # fmt: skip
    return rows


SCRAPER = """
import sys, time, urllib.request
base, until = sys.argv[1], time.time() + float(sys.argv[2])
n = 0
while time.time() < until:
    started = time.time()
    for path in ("/metrics", "/status"):
        with urllib.request.urlopen(base + path, timeout=60) as response:
            response.read()
    n += 1
    time.sleep(max(0.0, 1.0 - (time.time() - started)))
print(n)
"""


async def throughput(
    h: Harness, pool: list[list[Event]], mode: str, seconds: float
) -> tuple[float, float, int]:
    """Events/s the loop applies for ``seconds`` while (mode "old"/"new") a scraper reads
    /metrics and /status every second, or (mode "none") nobody does; the process's CPU
    microseconds per applied event (less disturbed by a shared machine than wall time: a
    render in the server's thread takes the GIL from the loop); the scrapes made."""
    server = HttpServer("127.0.0.1", 0, h.metrics, h)
    server._exposition.metrics = h.metrics if mode == "new" else None
    h.status_mode = mode
    await server.start()
    scraper = None
    try:
        if mode != "none":
            scraper = await asyncio.create_subprocess_exec(
                sys.executable, "-c", SCRAPER, f"http://127.0.0.1:{server.bound_port}",
                str(seconds + 1), stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            await asyncio.sleep(1.0)  # its first scrape (all text rendered) before counting
        applied, i = 0, 0
        started, cpu = time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds:
            events = pool[i % len(pool)]
            h.apply(events)
            applied += len(events)
            i += 1
            await asyncio.sleep(0)  # as the batch loop awaits its fetch
        rate = applied / (time.perf_counter() - started)
        cpu_us = 1e6 * (time.process_time() - cpu) / applied
        scrapes = 0
        if scraper is not None:
            out, _ = await scraper.communicate()  # it ends on its own, after its last scrape
            scrapes = int(out or 0)
        return rate, cpu_us, scrapes
    finally:
        if scraper is not None and scraper.returncode is None:
            scraper.kill()
            await scraper.wait()
        await server.stop()


def report(args: argparse.Namespace) -> str:
    # A scrape cut short when a run ends is not this bench's finding.
    logging.getLogger("monitor.http.server").setLevel(logging.CRITICAL)
    h = Harness(args.models, args.reference)
    fill = batches(h.models, 20, 3)
    steady = batches(h.models, args.per_model, 4, seed=11)
    started = time.perf_counter()
    rounds = 0
    # Every reference full and every detector testing before anything is measured.
    while rounds * 20 < args.reference * 3:
        h.apply(fill[rounds % len(fill)])
        rounds += 1
    fill_s = time.perf_counter() - started
    members = sum(len(s.members) for m in h.engine.models.values() for s in m.signals)
    h.model_status.json()
    Exposition(h.metrics.registry, h.metrics)._render()
    rows = costs(h, args.repeats, [0, 10, 100, len(h.models)])
    runs: dict[str, list[tuple[float, float, int]]] = {"none": [], "old": [], "new": []}
    for _ in range(args.repeats):
        for mode in runs:  # interleaved
            runs[mode].append(asyncio.run(throughput(h, steady, mode, args.seconds)))
    out = [
        "# /metrics and /status: before and after (issue 16)",
        "",
        f"`python bench/publish.py --models {args.models} --seconds {args.seconds} "
        f"--repeats {args.repeats} --reference {args.reference} --per-model {args.per_model}`"
        f" on {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores; {len(h.engine.models)} models, {members} detectors "
        f"(14 signals each), filled in {fill_s:.0f}s. Costs: the fastest of {args.repeats} "
        "runs; throughput: the median of interleaved runs.",
        "",
        "| what | value |",
        "| --- | ---: |",
        *(f"| {name} | {value:,.1f} |" for name, value in rows),
        "",
        f"Engine throughput (batches of {args.per_model} events of every model, the "
        "publish after each) while a scraper process reads /metrics and /status every "
        "second:",
        "",
        "| scraper | events/s (median) | runs | vs none | CPU us/event (median) | vs none "
        "| scrapes per run |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    base = statistics.median(r[0] for r in runs["none"])
    base_cpu = statistics.median(r[1] for r in runs["none"])
    for mode, label in (("none", "none"), ("old", "before (full render)"), ("new", "after")):
        med = statistics.median(r[0] for r in runs[mode])
        cpu = statistics.median(r[1] for r in runs[mode])
        shown = ", ".join(f"{r[0]:,.0f}" for r in runs[mode])
        scrapes = ", ".join(str(r[2]) for r in runs[mode])
        out.append(
            f"| {label} | {med:,.0f} | {shown} | {med / base:.2f} | {cpu:.1f} | "
            f"{cpu / base_cpu:.2f} | {scrapes} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", type=int, default=100)
    parser.add_argument("--per-model", type=int, default=10)
    args = parser.parse_args(argv)
    print(report(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
