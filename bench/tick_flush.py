"""The engine and its tick in steady state, feeding waiting events at every tick ("every",
``Engine(flush_after_s=0)``, the tick before issue 16's bound) against only once the oldest
has waited ``FLUSH_AFTER_S`` ("bounded", the daemon's tick).

Two engines of the same policy get the same pre-decoded events of
``monitor.tools.traffic.synthetic_batches``: first untimed until every reference and window is
full (``--fill`` events per model), then for each ``--rate`` in turn, on the same engines,
``--seconds`` simulated seconds, each of that many events in batches of ``--batch`` and one
tick, the two engines in turn second by second (a load change on the shared cores hits both). CPU time (``time.process_time``) of the
batches and of the ticks is summed per side; also reported: the models a tick feeds, and the
batch columns that waiting spans keep alive after a tick (the memory the bound bounds). At
the end both engines' checkpoints of every model are compared (the run fails if they differ).

    PYTHONPATH=. python bench/tick_flush.py --models 1000 --rate 36000 --batch 9000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
import numpy as np

from bench.tick import _events
from monitor.config.settings import load_settings
from monitor.engine.engine import FLUSH_AFTER_S, Engine
from monitor.engine.events import Event
from monitor.state.checkpoints import snapshot_model


def _take(stream: Iterator[Event], n: int) -> list[Event]:
    out = []
    for event in stream:
        out.append(event)
        if len(out) == n:
            break
    return out


def held_bytes(engine: Engine) -> tuple[int, int]:
    """The batches whose columns waiting spans keep alive, and those columns' bytes."""
    held: dict[int, Any] = {}
    for monitor in engine.models.values():
        for columns, _start, _end in monitor.deferred:
            held[id(columns)] = columns
    size = 0
    for columns in held.values():
        for value in columns._cache.values():
            arrays = value if isinstance(value, tuple) else (value,)
            for array in arrays:
                size += array.nbytes if isinstance(array, np.ndarray) else sys.getsizeof(array)
    return len(held), size


def _checkpoints(engine: Engine) -> dict[str, Any]:
    out = {}
    for model, monitor in engine.models.items():
        monitor.flush(0.0)
        state = msgspec.msgpack.decode(snapshot_model(monitor, None, None))
        state.pop("saved_at")
        out[model] = msgspec.msgpack.encode(state)
    return out


def fill(
    policy: Path, n_models: int, per_model: int, rate: int, batch: int
) -> tuple[dict[str, Engine], Iterator[Event], float]:
    """The two engines, every reference and window full; the stream and the clock."""
    settings = load_settings(policy)
    sides = {
        "every": Engine(settings.policy_for, max_models=n_models, flush_after_s=0.0),
        "bounded": Engine(settings.policy_for, max_models=n_models),
    }
    stream = _events(10**9, n_models, seed=7)
    now = 0.0
    for _ in range(per_model * n_models // rate):
        now += 1.0
        events = _take(stream, rate)
        for engine in sides.values():
            for start in range(0, len(events), batch):
                engine.apply(events[start : start + batch], now)
            engine.tick(now + 0.5)
    return sides, stream, now


def run(
    sides: dict[str, Engine],
    stream: Iterator[Event],
    now: float,
    seconds: int,
    rate: int,
    batch: int,
) -> tuple[str, float]:
    """``seconds`` timed seconds at ``rate``: the table's row, and the clock after."""
    n_models = sides["every"].max_models
    applying = dict.fromkeys(sides, 0.0)
    ticking: dict[str, list[float]] = {kind: [] for kind in sides}
    fed: dict[str, list[int]] = {kind: [] for kind in sides}
    held: list[tuple[int, int]] = []
    kinds = list(sides)
    for _ in range(seconds):
        now += 1.0
        events = _take(stream, rate)
        kinds.reverse()
        for kind in kinds:
            engine = sides[kind]
            start = time.process_time()
            for first in range(0, len(events), batch):
                engine.apply(events[first : first + batch], now)
            applying[kind] += time.process_time() - start
            waiting = sum(bool(m.deferred) for m in engine.models.values())
            start = time.process_time()
            engine.tick(now + 0.5)
            ticking[kind].append(time.process_time() - start)
            fed[kind].append(waiting - sum(bool(m.deferred) for m in engine.models.values()))
            if kind == "bounded":
                held.append(held_bytes(engine))
    cells = []
    for kind in ("every", "bounded"):
        tick_ms = statistics.fmean(ticking[kind]) * 1000
        total = applying[kind] + sum(ticking[kind])
        cells.append(
            f"{tick_ms:.1f} | {statistics.fmean(fed[kind]):,.0f} | {seconds * rate / total:,.0f}"
        )
    batches, size = max(held, key=lambda h: h[1])
    row = (
        f"| {n_models:,} | {rate:,} | {batch:,} | {' | '.join(cells)} "
        f"| {statistics.fmean(h[0] for h in held):.1f} / {batches} "
        f"| {statistics.fmean(h[1] for h in held) / 1e6:.1f} / {size / 1e6:.1f} |"
    )
    return row, now


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, default=Path("bench/policy_steady.yaml"))
    parser.add_argument("--models", type=int, nargs="+", default=[1000])
    parser.add_argument("--fill", type=int, default=2_300, help="events per model, untimed")
    parser.add_argument("--seconds", type=int, default=30, help="timed seconds (one tick each)")
    parser.add_argument("--rate", type=int, nargs="+", default=[36_000], help="events/second")
    parser.add_argument("--batch", type=int, default=9_000, help="events per Engine.apply")
    args = parser.parse_args(argv)
    print(f"flush_after_s of the bounded tick: {FLUSH_AFTER_S}")
    print(
        "| models | events/s | events/batch | every: tick CPU ms | models fed/tick "
        "| engine+tick events/CPU-s | bounded: tick CPU ms | models fed/tick "
        "| engine+tick events/CPU-s | batches held after a tick (mean / max) "
        "| their columns MB (mean / max) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n_models in args.models:
        sides, stream, now = fill(args.policy, n_models, args.fill, args.rate[0], args.batch)
        for rate in args.rate:
            row, now = run(sides, stream, now, args.seconds, rate, args.batch)
            print(row, flush=True)
        if _checkpoints(sides["every"]) != _checkpoints(sides["bounded"]):
            raise SystemExit("checkpoints differ between the two ticks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
