"""The daemon's one-second health tick at scale (issue 16, "publishing incremental"): what
``Engine.tick``, the publisher and the history cost the event loop each second, the way
every model is evaluated, published and sampled ("every") against only the models the clock
can move ("moved", the daemon's tick).

Two engines of the same policy get the same pre-decoded events of
``monitor.tools.traffic.synthetic_batches`` (``--fill`` per model, untimed), each with its
own metrics, ``SeriesPublisher`` and ``SignalHistory``; then ``--ticks`` ticks one second
apart, before each of which a batch brings events to ``--busy`` of the models (0: a quiet
second, only the clock). Each tick is timed on both (in turn: a load change on the shared
cores hits both); the medians are reported. The two sides' /metrics, /status and history
are compared at the end (the run fails if they differ).

    PYTHONPATH=. python bench/tick.py --models 1000 --busy 0 0.1 1.0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry, generate_latest

from monitor.config.settings import load_settings
from monitor.engine.engine import Engine
from monitor.engine.events import Event, EventDecoder
from monitor.observability.history import SignalHistory
from monitor.observability.metrics import Metrics
from monitor.observability.publisher import SeriesPublisher
from monitor.tools.traffic import synthetic_batches, synthetic_models


def _events(n: int, n_models: int, seed: int) -> Iterator[Event]:
    decoder = EventDecoder(max_bytes=1 << 20)
    for _idx, values in synthetic_batches(n, n_models, seed=seed):
        for value in values:
            event = decoder.decode(value)
            assert isinstance(event, Event)
            yield event


class Side:
    """One engine with the publisher and history of a daemon, ticked one way."""

    def __init__(self, settings: Any, n_models: int, *, every: bool) -> None:
        self.every = every
        self.engine = Engine(settings.policy_for, max_models=n_models)
        self.registry = CollectorRegistry()
        self.publisher = SeriesPublisher(Metrics.create(self.registry), self.engine.models)
        self.wall = 0.0
        self.history = SignalHistory(wall_clock=lambda: self.wall)
        self.evaluated = 0

    def batch(self, events: list[Event], now: float) -> None:
        for _ in self.engine.apply_stepwise(events, now):
            pass
        self.publisher.count_events(self.engine.received)
        self.publisher.publish(set(self.engine.changed))

    def tick(self, now: float) -> float:
        """One tick as the daemon's (the part this issue changes); its seconds."""
        self.wall = now
        engine = self.engine
        start = time.perf_counter()
        if self.every:
            for monitor in engine.models.values():
                if hasattr(monitor, "unevaluated"):  # absent before: every model evaluated
                    monitor.unevaluated = True  # every model evaluated, as the tick did
            engine.tick(now)
            self.publisher.publish(set(engine.models))
            self.history.record(engine.models, now)
        else:
            engine.tick(now)
            moved = engine.take_moved()
            self.publisher.publish_tick(engine.ticked, moved)
            self.history.record(engine.models, now, moved)
        spent = time.perf_counter() - start
        self.evaluated += len(getattr(engine, "ticked", engine.models))
        return spent

    def shown(self) -> tuple[Any, ...]:
        lines = generate_latest(self.registry).decode().splitlines()
        return (
            sorted(line for line in lines if "_created" not in line),
            json.dumps(self.engine.snapshot(), default=str, sort_keys=True),
            json.dumps(self.history.snapshot(), sort_keys=True),
        )


def run(policy: Path, n_models: int, fill: int, ticks: int, busy: float) -> str:
    settings = load_settings(policy)
    sides = [Side(settings, n_models, every=True), Side(settings, n_models, every=False)]
    per_tick = max(1, round(busy * n_models)) * 5 if busy > 0 else 0
    stream = _events(fill * n_models + ticks * per_tick, n_models, seed=7)
    now = 0.0
    held: list[Event] = []
    for event in stream:
        held.append(event)
        if len(held) == 10 * n_models:
            now += 1.0
            for side in sides:
                side.batch(held, now)
                side.tick(now)
            held = []
        if now >= fill / 10:
            break
    for side in sides:
        side.evaluated = 0
    spent: list[list[float]] = [[], []]
    order = [0, 1]
    busy_models = set(synthetic_models(n_models)[: max(1, round(busy * n_models))])
    for _ in range(ticks):
        now += 1.0
        batch: list[Event] = []
        if per_tick:
            for event in stream:
                if event.model in busy_models:
                    batch.append(event)
                if len(batch) >= per_tick:
                    break
        order.reverse()
        for k in order:
            if batch:
                sides[k].batch(batch, now - 0.5)
            spent[k].append(sides[k].tick(now))
    if sides[0].shown() != sides[1].shown():
        raise SystemExit("/metrics, /status or history differ between the two ticks")
    every, moved = (statistics.median(s) * 1000 for s in spent)
    every_mean, moved_mean = (statistics.fmean(s) * 1000 for s in spent)
    every_max, moved_max = (max(s) * 1000 for s in spent)
    return (
        f"| {n_models:,} | {busy:.0%} | {every:.2f} / {every_mean:.2f} / {every_max:.2f} "
        f"| {moved:.2f} / {moved_mean:.2f} / {moved_max:.2f} | {every_mean / moved_mean:.1f}x "
        f"| {sides[0].evaluated / ticks:,.0f} | {sides[1].evaluated / ticks:,.0f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, default=Path("bench/policy_steady.yaml"))
    parser.add_argument("--models", type=int, nargs="+", default=[1000])
    parser.add_argument("--fill", type=int, default=40, help="events per model before timing")
    parser.add_argument("--ticks", type=int, default=15)
    parser.add_argument(
        "--busy", type=float, nargs="+", default=[0.0, 0.1, 1.0],
        help="share of the models that get events before each tick",
    )  # fmt: skip
    args = parser.parse_args(argv)
    print(
        "| models | busy | every model: ms/tick median / mean / max | moved only: ms/tick "
        "median / mean / max | ratio of means | evaluated (every) | evaluated (moved) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n_models in args.models:
        for busy in args.busy:
            print(run(args.policy, n_models, args.fill, args.ticks, busy), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
