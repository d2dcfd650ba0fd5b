"""The engine alone in steady state, with detector banks and per object (issue 16, "tests
batched across models").

Both engines get the same pre-decoded events of ``monitor.tools.traffic.synthetic_batches``
through ``Engine.apply`` in batches of ``--batch`` events: first untimed until every reference
and window is full, then ``--repeats`` timed rounds, each a fresh stretch of the stream that
both engines apply batch by batch in turn (interleaved: a load change on the shared cores hits
both); the median of the rounds is reported. At the end the two engines' checkpoints of every detector are compared byte for byte
(the run fails if they differ).

    PYTHONPATH=. python bench/engine_hot.py --models 200 1000 --policy bench/policy_steady.yaml
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.config.settings import load_settings
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


def _states(engine: Engine) -> dict[str, bytes]:
    return {
        f"{model}/{member.name}": member.detector.to_bytes()
        for model, monitor in engine.models.items()
        for signal in monitor.signals
        for member in signal.members
    }


def run(policy: Path, n_models: int, fill: int, timed: int, batch: int, repeats: int) -> str:
    settings = load_settings(policy)
    engines = {
        kind: Engine(settings.policy_for, max_models=max(n_models, 1), banks=kind == "banks")
        for kind in ("banks", "per-object")
    }
    stream = _batches(_events(fill * n_models + repeats * timed, n_models, seed=7), batch)
    now = 0.0
    filled = 0
    for events in stream:
        now += 1.0
        for engine in engines.values():
            engine.apply(events, now)
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
        kinds = list(engines)
        for events in stretch:
            now += 1.0
            # Batch by batch, each engine in turn (first one, then the other): a change of
            # load on the shared cores hits both alike.
            kinds.reverse()
            for kind in kinds:
                start = time.perf_counter()
                engines[kind].apply(events, now)
                spent[kind] += time.perf_counter() - start
        for kind in engines:
            rates[kind].append(got / spent[kind])
    for engine in engines.values():
        engine.tick(now + 1.0)
    if _states(engines["banks"]) != _states(engines["per-object"]):
        raise SystemExit("detector states differ between the banks and the per-object engine")
    banks = statistics.median(rates["banks"])
    per_object = statistics.median(rates["per-object"])
    return (
        f"| {policy.name} | {n_models:,} | {batch:,} | {per_object:,.0f} | {banks:,.0f} "
        f"| {banks / per_object:.2f}x |"
    )


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
    args = parser.parse_args(argv)
    print("| policy | models | events/batch | per-object events/s | banks events/s | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for policy in args.policy:
        for n_models in args.models:
            print(
                run(policy, n_models, args.fill, args.timed, args.batch, args.repeats), flush=True
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
