"""The engine's hot path alone, no Kafka: record bytes -> decode -> engine, per event, for the
two decode paths side by side (issue 16, "decode straight into columns").

Two engines of one policy are fed the same batches of ``monitor/tools/traffic.py``'s
synthetic records, alternately batch by batch: (old) ``EventDecoder`` per record and
``Engine.apply_stepwise(events)``; (new) ``ColumnarPath.decode`` and
``Engine.apply_stepwise(decoded)``, as ``monitor/daemon/batches.py`` does. Both first take
a warm-up (auto discovery over, every reference full, every detector testing: the steady
state), then the CPU time of each batch is measured. Each batch's transitions are compared
(the two paths must agree). Run ``python bench/decode_hot.py --help``.

``--against REF`` measures the column building alone, this tree against the git revision
REF side by side in one process: REF's ``monitor/engine/decode.py`` and ``columns.py`` are
loaded beside this tree's (as modules of their own), and each batch goes, interleaved:
records -> ``ColumnDecoder.decode`` (every column of the policy, top-level ones included),
and ``EventDecoder`` events -> ``EventColumns`` (the event path's columns), REF's and this
tree's; every column is checked equal to REF's.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.config.settings import load_settings  # noqa: E402
from monitor.engine import columns as columns_here  # noqa: E402
from monitor.engine import decode as decode_here  # noqa: E402
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
    parser.add_argument(
        "--against", metavar="REF", help="the column building alone, against git revision REF"
    )
    parser.add_argument("--rounds", type=int, default=41, help="rounds of --against")
    parser.add_argument(
        "--only", choices=["ref", "here", "neither"], help="--against: one side alone, untimed"
    )
    parser.add_argument(
        "--part",
        choices=["all", "ColumnDecoder.decode", "of", "EventColumns"],
        default="all",
        help="--only: which part (the first word of its row)",
    )
    args = parser.parse_args()
    if args.against:
        against(args)
        return

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


def _module_at(ref: str, path: str, name: str, replace: dict[str, str]) -> ModuleType:
    """The module of ``path`` as it is at git revision ``ref``, loaded as ``name``."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for old, new in replace.items():
        source = source.replace(old, new)
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source, f"{ref}:{path}", "exec"), module.__dict__)
    return module


def _same(found: Any, expected: Any) -> bool:
    if isinstance(expected, np.ndarray):
        return isinstance(found, np.ndarray) and np.array_equal(found, expected, equal_nan=True)
    return bool(list(found) == list(expected))


def against(args: argparse.Namespace) -> None:
    """The column building alone: this tree against ``args.against``, one process."""
    ref_columns = _module_at(args.against, "monitor/engine/columns.py", "_ref_columns", {})
    ref_decode = _module_at(
        args.against,
        "monitor/engine/decode.py",
        "_ref_decode",
        {"monitor.engine.columns": "_ref_columns"},
    )
    settings = load_settings(ROOT / args.policy)
    max_bytes = settings.kafka.max_record_bytes
    signals = list(settings.policy_for("any model").signals)
    # What ColumnarPath names after its first batches of these events (bench/results/decode.md).
    unread = ("c0", "c1")
    decoders = {
        "ref": ref_decode.ColumnDecoder(signals, max_bytes, unread=unread),
        "here": decode_here.ColumnDecoder(signals, max_bytes, unread=unread),
    }
    modules = {"ref": ref_columns, "here": columns_here}
    keyed = {
        name: {c.key: c for s in signals for _, c in module.extractors_for(s)}
        for name, module in modules.items()
    }
    events_decoder = EventDecoder(max_bytes)
    batches = [
        values for _, values in synthetic_batches(args.batch * 8, args.models, 3, args.batch)
    ]
    events = [
        [e for e in map(events_decoder.decode, values) if isinstance(e, Event)]
        for values in batches
    ]

    def column_path(name: str, i: int) -> dict[Hashable, Any]:
        return dict(decoders[name].decode(batches[i]).columns)

    decoded = {name: [d.decode(values) for values in batches] for name, d in decoders.items()}

    def columns_of_rows(name: str, i: int) -> dict[Hashable, Any]:
        batch = decoded[name][i]
        batch.columns = {}
        decoders[name]._build_columns(batch, False)
        return dict(batch.columns)

    def event_path(name: str, i: int) -> dict[Hashable, Any]:
        built = modules[name].EventColumns(events[i])
        return {key: built.get(column) for key, column in keyed[name].items()}

    runs: dict[str, Callable[[str, int], dict[Hashable, Any]]] = {
        "ColumnDecoder.decode (records -> every column)": column_path,
        "of which the columns (decoded rows -> every column)": columns_of_rows,
        "EventColumns (events -> every column)": event_path,
    }
    if args.only:
        # For instruction counts (callgrind): one side's runs alone, or neither (the set-up
        # alone, to subtract): ``valgrind --tool=callgrind python bench/decode_hot.py
        # --against REF --only here``.
        chosen = [label for label in runs if args.part in ("all", label.split()[0])]
        for r in range(args.rounds):
            for label in chosen:
                if args.only != "neither":
                    runs[label](args.only, r % len(batches))
        print(f"--only {args.only}: {args.rounds} rounds of {len(chosen)} part(s) run")
        return
    cpu: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        i = r % len(batches)
        for label, run in runs.items():
            order = ["ref", "here"] if r % 2 else ["here", "ref"]
            found = {}
            for name in order:
                start = time.process_time()
                found[name] = run(name, i)
                cpu.setdefault((label, name), []).append(
                    (time.process_time() - start) / len(batches[i])
                )
            ref, here = found["ref"], found["here"]
            if ref.keys() != here.keys() or not all(_same(here[k], ref[k]) for k in ref):
                raise SystemExit(f"{label}: the columns differ from {args.against}'s")
    print(
        f"policy {args.policy}, {args.models} models, batches of {args.batch:,}, "
        f"{args.rounds} rounds (CPU time: process_time), every column equal to "
        f"{args.against}'s"
    )
    print(f"| part | {args.against}, median / best | this tree, median / best | x |")
    print("| --- | ---: | ---: | ---: |")
    for label in runs:
        ref, here = cpu[(label, "ref")], cpu[(label, "here")]
        print(
            f"| {label} | {statistics.median(ref) * 1e6:.3f} / {min(ref) * 1e6:.3f} "
            f"| {statistics.median(here) * 1e6:.3f} / {min(here) * 1e6:.3f} "
            f"| {statistics.median(ref) / statistics.median(here):.2f} |"
        )


if __name__ == "__main__":
    main()
