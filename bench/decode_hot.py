"""The engine's hot path alone, no Kafka: record bytes -> decode -> engine, per event, for the
two decode paths side by side (issue 16, "decode straight into columns").

Two engines of one policy are fed the same batches of ``monitor/tools/traffic.py``'s
synthetic records, alternately batch by batch: (old) ``EventDecoder`` per record and
``Engine.apply_stepwise(events)``; (new) ``ColumnarPath.decode`` and
``Engine.apply_stepwise(decoded)``, as ``monitor/daemon/batches.py`` does. Both first take
a warm-up (auto discovery over, every reference full, every detector testing: the steady
state), then the CPU time of each batch is measured. Each batch's transitions are compared
(the two paths must agree). Run ``python bench/decode_hot.py --help``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.config.settings import load_settings  # noqa: E402
from monitor.engine.decode import ColumnarPath  # noqa: E402
from monitor.engine.engine import Engine  # noqa: E402
from monitor.engine.events import Event, EventDecoder  # noqa: E402
from monitor.tools.traffic import synthetic_batches  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="bench/policy_steady.yaml")
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--batch", type=int, default=5000, help="records a batch")
    parser.add_argument("--warmup", type=int, default=600_000, help="events before measuring")
    parser.add_argument("--events", type=int, default=300_000, help="events measured")
    args = parser.parse_args()

    settings = load_settings(ROOT / args.policy)
    max_bytes = settings.kafka.max_record_bytes
    old, new = Engine.for_settings(settings), Engine.for_settings(settings)
    events_decoder = EventDecoder(max_bytes)
    path = ColumnarPath(new, max_bytes)
    total = args.warmup + args.events
    stream = synthetic_batches(total, args.models, seed=3, chunk=args.batch)
    seen = 0
    cpu: dict[str, list[float]] = {"old": [], "new": []}
    now = 0.0

    def run_old(values: list[bytes]) -> list[str]:
        events = [e for e in map(events_decoder.decode, values) if isinstance(e, Event)]
        return [t.describe() for found in old.apply_stepwise(events, now) for t in found]

    def run_new(values: list[bytes]) -> list[str]:
        decoded = path.decode(values)
        if decoded is None:
            events = [e for e in map(events_decoder.decode, values) if isinstance(e, Event)]
            found = [t.describe() for ts in new.apply_stepwise(events, now) for t in ts]
            path.note([e.model for e in events])
            return found
        return [t.describe() for ts in new.apply_stepwise(decoded, now) for t in ts]

    for i, (_, values) in enumerate(stream):
        now = float(i)
        runs = [("old", run_old), ("new", run_new)]
        if i % 2:
            runs.reverse()  # neither always goes first (caches, the other load)
        found = {}
        for name, run in runs:
            start = time.process_time()
            found[name] = run(values)
            if seen >= args.warmup:
                cpu[name].append((time.process_time() - start) / len(values))
        if found["old"] != found["new"]:
            raise SystemExit(f"batch {i}: transitions differ: {found}")
        seen += len(values)
    print(
        f"policy {args.policy}, {args.models} models, batches of {args.batch:,}, "
        f"{args.warmup:,} events of warm-up, {len(cpu['old'])} batches measured; "
        f"new path: {path.columnar_batches} batches into columns, {path.event_batches} "
        f"into events, {path.rows_decoded_again} rows decoded again"
    )
    print("| path | CPU us/event, median | best | x old (median) |")
    print("| --- | ---: | ---: | ---: |")
    base = statistics.median(cpu["old"])
    for name, label in (("old", "EventDecoder + events"), ("new", "ColumnarPath + columns")):
        median = statistics.median(cpu[name])
        print(
            f"| {label} | {median * 1e6:.2f} | {min(cpu[name]) * 1e6:.2f} | {base / median:.2f} |"
        )


if __name__ == "__main__":
    main()
