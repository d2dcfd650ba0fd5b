"""The engine alone in steady state: per object, with detector banks fed member by member,
and with the banks' lane (issue 16, "tests batched across models").

Every engine (``--kinds``: ``per-object`` is ``Engine(banks=False)``, ``banks`` is
``Engine(lane=False)``, ``lane`` the default engine) gets the same pre-decoded events of
``monitor.tools.traffic.synthetic_batches`` through ``Engine.apply`` in batches of ``--batch``
events: first untimed until every reference and window is full, then ``--repeats`` timed
rounds, each a fresh stretch of the stream that the engines apply batch by batch in turn
(interleaved: a load change on the shared cores hits all); the median of the rounds is
reported. ``--clock process`` times with ``time.process_time`` (the process's CPU time: what
other processes on the shared cores do counts less). At the end the engines' checkpoints of
every detector are compared byte for byte (the run fails if they differ).

    PYTHONPATH=. python bench/engine_hot.py --models 200 1000 --policy bench/policy_steady.yaml
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

from monitor.config.settings import load_settings
from monitor.engine.decode import ColumnarPath
from monitor.engine.engine import Engine
from monitor.engine.events import Event, EventDecoder
from monitor.tools.traffic import synthetic_batches


def _events(n: int, n_models: int, seed: int) -> Iterator[list[Event]]:
    decoder = EventDecoder(max_bytes=1 << 20)
    for _idx, values in synthetic_batches(n, n_models, seed=seed):
        out = []
        for value in values:
            event = decoder.decode(value)
            assert isinstance(event, Event)
            out.append(event)
        yield out


def _batches(events: Iterator[list[Event]], size: int) -> Iterator[list[Event]]:
    held: list[Event] = []
    for chunk in events:
        held += chunk
        while len(held) >= size:
            yield held[:size]
            held = held[size:]
    if held:
        yield held


def _apply(
    engine: Engine,
    path: ColumnarPath | None,
    events: list[Event],
    now: float,
    clock: Callable[[], float],
) -> float:
    """Apply one batch; the time the engine took. With ``path``, the batch is decoded into
    columns first (as the daemon does, untimed) and applied as such."""
    decoded = None
    if path is not None:
        decoded = path.decode([msgspec.json.encode(event) for event in events])
    start = clock()
    if decoded is None:
        engine.apply(events, now)
    else:
        for _step in engine.apply_stepwise(decoded, now):
            pass
    spent = clock() - start
    if path is not None and decoded is None:
        path.note([event.model for event in events])
    return spent


def _states(engine: Engine) -> dict[str, bytes]:
    return {
        f"{model}/{member.name}": member.detector.to_bytes()
        for model, monitor in engine.models.items()
        for signal in monitor.signals
        for member in signal.members
    }


#: Per kind of engine: its keyword arguments.
KINDS: dict[str, dict[str, bool]] = {
    "per-object": {"banks": False},
    "banks": {"lane": False},
    "lane": {},
}


def run(
    policy: Path,
    n_models: int,
    fill: int,
    timed: int,
    batch: int,
    repeats: int,
    kinds: list[str],
    clock: Callable[[], float] = time.perf_counter,
    columnar: bool = False,
) -> str:
    settings = load_settings(policy)
    engines = {
        kind: Engine(settings.policy_for, max_models=max(n_models, 1), **KINDS[kind])
        for kind in kinds
    }
    # Each engine's own decoder (it asks its engine which models discover).
    paths = {kind: ColumnarPath(e, 1 << 20) if columnar else None for kind, e in engines.items()}
    stream = _batches(_events(fill * n_models + repeats * timed, n_models, seed=7), batch)
    now = 0.0
    filled = 0
    for events in stream:
        now += 1.0
        for kind, engine in engines.items():
            _apply(engine, paths[kind], events, now, clock)
        filled += len(events)
        if filled >= fill * n_models:
            break
    rates: dict[str, list[float]] = {kind: [] for kind in engines}
    for _ in range(repeats):
        stretch = []
        got = 0
        for events in stream:
            stretch.append(events)
            got += len(events)
            if got >= timed:
                break
        spent = dict.fromkeys(engines, 0.0)
        order = list(engines)
        for events in stretch:
            now += 1.0
            # Batch by batch, each engine in turn (first one, then the other): a change of
            # load on the shared cores hits both alike.
            order.reverse()
            for kind in order:
                spent[kind] += _apply(engines[kind], paths[kind], events, now, clock)
        for kind in engines:
            rates[kind].append(got / spent[kind])
    for engine in engines.values():
        engine.tick(now + 1.0)
    states = {kind: _states(engine) for kind, engine in engines.items()}
    for kind in kinds[1:]:
        if states[kind] != states[kinds[0]]:
            raise SystemExit(f"detector states differ between the {kinds[0]} and {kind} engines")
    median = {kind: statistics.median(rates[kind]) for kind in kinds}
    cells = " | ".join(f"{median[k]:,.0f}" if k in median else "-" for k in KINDS)
    ratios = []
    for numerator, denominator in (("banks", "per-object"), ("lane", "banks")):
        if numerator in median and denominator in median:
            ratios.append(f"{median[numerator] / median[denominator]:.2f}x")
        else:
            ratios.append("-")
    name = f"{policy.name}{' (columns)' if columnar else ''}"
    return f"| {name} | {n_models:,} | {batch:,} | {cells} | {' | '.join(ratios)} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policy", type=Path, nargs="+", default=[Path("bench/policy_steady.yaml")]
    )
    parser.add_argument("--models", type=int, nargs="+", default=[200, 1000])
    parser.add_argument(
        "--fill", type=int, default=2_300, help="events per model before timing (untimed)"
    )
    parser.add_argument("--timed", type=int, default=180_000, help="events per timed round")
    parser.add_argument("--batch", type=int, default=18_000, help="events per Engine.apply")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--kinds", nargs="+", choices=list(KINDS), default=list(KINDS), help="engines to run"
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="time.perf_counter (wall) or time.process_time (this process's CPU time)",
    )
    parser.add_argument(
        "--columnar",
        action="store_true",
        help="decode each batch into columns (monitor.engine.decode, untimed) as the daemon does",
    )
    args = parser.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(
        "| policy | models | events/batch | per-object events/s | banks events/s "
        "| lane events/s | banks / per-object | lane / banks |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for policy in args.policy:
        for n_models in args.models:
            row = run(
                policy,
                n_models,
                args.fill,
                args.timed,
                args.batch,
                args.repeats,
                args.kinds,
                clock,
                args.columnar,
            )
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
