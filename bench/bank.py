"""Per-object ks_window (or rate_window) detectors against a bank, in steady state, side by side.

Models x 10 features, each feature a ks_window of the bench policy (reference 1,000, window
1,000, stride 100, family of 10); references full and windows full before the clock starts
(each model at its own phase of the stride, as live traffic leaves them). Each batch spreads
``--batch-events`` events evenly over the models; each member gets its model's slice, the way
``monitor/engine/engine.py`` feeds a member. Both paths get the same values in the same order;
at the end their checkpoints are compared byte for byte (so the two did the same work).

    PYTHONPATH=. python bench/bank.py --models 200 1000 --repeats 3
    PYTHONPATH=. python bench/bank.py --detector rate_window --models 200 1000 --repeats 3
    PYTHONPATH=. python bench/bank.py --detector quantile --models 200 1000 --repeats 3

``rate_window`` and ``quantile`` run one signal per model (an error rate; a p99 latency
against 1.5x the reference's), reference 1,000, window 1,000.

``--baseline FILE`` adds the bank class of another version of ``detectors/bank.py`` (say
``git show 743ea28:detectors/bank.py > /tmp/bank_old.py``) as one more column, fed the same
batches through ``update_flat`` in the same interleaved repeats and compared byte for byte;
``--clock process`` times with ``time.process_time`` (CPU of this process: steadier than the
wall clock on shared cores).

    PYTHONPATH=. python bench/bank.py --models 1000 --features 12 --clock process \
        --baseline /tmp/bank_old.py
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from detectors import build_detector
from detectors.bank import KSWindowBank, QuantileBank, RateWindowBank
from detectors.numeric import KSWindowSpec
from detectors.quantile import QuantileSpec
from detectors.rates import RateWindowSpec

FEATURES = 10
#: The bench policy's ks_window; ``--reference`` replaces its reference size.
SPEC: KSWindowSpec | RateWindowSpec | QuantileSpec = KSWindowSpec(reference={"size": 1000})
BANKS = {"ks_window": KSWindowBank, "rate_window": RateWindowBank, "quantile": QuantileBank}


def warm_values(models: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per member: a full reference, a full window and a per-model phase of the stride."""
    phases = rng.integers(0, SPEC.stride, models)
    need = SPEC.reference.size + SPEC.window
    return [
        values(rng.normal(size=need + int(phases[model])))
        for model in range(models)
        for _ in range(FEATURES)
    ]


def steady_batches(
    models: int, events_per_model: int, per_batch: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Batches of shape (members, per_batch): row ``i`` is member ``i``'s slice."""
    members = models * FEATURES
    # A mild drift on a tenth of the models: some tests breach, as in a live fleet.
    shift = np.where(np.arange(members) // FEATURES % 10 == 0, 0.3, 0.0)[:, None]
    return [
        values(rng.normal(size=(members, per_batch)) + shift)
        for _ in range(max(1, events_per_model // per_batch))
    ]


def values(normal: np.ndarray) -> np.ndarray:
    """The stream a detector of SPEC reads: the values, or errors (about 2%, 6% shifted)."""
    if isinstance(SPEC, RateWindowSpec):
        return (normal > 2.05).astype(np.float64)
    if isinstance(SPEC, QuantileSpec):
        return np.exp(4.6 + 0.4 * normal)  # a latency around 100 ms
    return normal


CLOCK: Callable[[], float] = time.perf_counter


def timed(run: Callable[[], None]) -> float:
    gc.collect()
    start = CLOCK()
    run()
    return CLOCK() - start


def baseline_class(path: str) -> Any:
    """The bank class of SPEC's detector from another version of detectors/bank.py."""
    spec = importlib.util.spec_from_file_location("bank_baseline", path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return getattr(module, BANKS[SPEC.type].__name__)


def parts(bank: Any, old_bank: Any, batch: np.ndarray, per_batch: int, repeats: int) -> str:
    """The KS bank's two kernels alone, this version's and the baseline's interleaved: the
    ranks of one batch's values (grouped member after member, as a round feeds them) and
    the distances of every row; the results are compared."""
    members = batch.shape[0]
    value_rows = np.repeat(bank._row_of[:members], per_batch)
    values = batch.reshape(-1)
    rows = bank._row_of[:members]
    kernels: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, b in (("baseline", old_bank), ("this", bank)):
            gc.collect()
            start = CLOCK()
            ranks = b._ranks(value_rows, values)
            kernels.setdefault(f"{name} ranks ns/value", []).append(
                (CLOCK() - start) / values.size * 1e9
            )
            start = CLOCK()
            distances = b._distances(rows)
            kernels.setdefault(f"{name} distances us/test", []).append(
                (CLOCK() - start) / rows.size * 1e6
            )
            if name == "baseline":
                expected = ranks, distances
            else:
                assert all(np.array_equal(a, e) for a, e in zip(ranks, expected[0], strict=True))
                assert all(
                    np.array_equal(a, e) for a, e in zip(distances, expected[1], strict=True)
                )
    return ", ".join(f"{key} {statistics.median(v):.1f}" for key, v in kernels.items())


def bench(models: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    members = models * FEATURES
    per_batch = max(1, args.batch_events // models)
    warm = warm_values(models, rng)
    batches = steady_batches(models, args.events_per_model, per_batch, rng)
    objects = [
        build_detector(SPEC, family_size=FEATURES, seed=i % FEATURES) for i in range(members)
    ]
    bank_class: Any = BANKS[SPEC.type]
    bank = bank_class(SPEC, capacity=members)
    flat_bank = bank_class(SPEC, capacity=members)
    old_bank = baseline_class(args.baseline)(SPEC, capacity=members) if args.baseline else None
    for i in range(members):
        bank.add(family_size=FEATURES, seed=i % FEATURES)
        flat_bank.add(family_size=FEATURES, seed=i % FEATURES)
        if old_bank is not None:
            old_bank.add(family_size=FEATURES, seed=i % FEATURES)
        objects[i].update_many(warm[i])
    bank.update_many(list(range(members)), warm)
    flat_bank.update_many(list(range(members)), warm)
    if old_bank is not None:
        old_bank.update_many(list(range(members)), warm)
    assert all(bank.banked(i) for i in range(members)), "warm-up left members filling"
    numbers = list(range(members))
    events = len(batches) * per_batch * models

    def per_object() -> None:
        for batch in batches:
            for i in numbers:
                objects[i].update_many(batch[i])

    def banked() -> None:
        for batch in batches:
            bank.update_many(numbers, list(batch))

    member_ids = np.arange(members)
    lengths = np.full(members, per_batch)

    def flat() -> None:
        # The engine's shape: each column of the batch, grouped model after model, at once.
        for batch in batches:
            flat_bank.update_flat(member_ids, batch.reshape(-1), lengths)

    def baseline_flat() -> None:
        assert old_bank is not None
        for batch in batches:
            old_bank.update_flat(member_ids, batch.reshape(-1), lengths)

    times: dict[str, list[float]] = {"per_object": [], "bank": [], "flat": [], "baseline": []}
    # The paths alternate; each repeat feeds both the same batches again, in the same order.
    for _ in range(args.repeats):
        times["per_object"].append(timed(per_object))
        times["bank"].append(timed(banked))
        times["flat"].append(timed(flat))
        if old_bank is not None:
            times["baseline"].append(timed(baseline_flat))
    sample = range(0, members, max(1, members // 50))
    for i in sample:
        assert bank.to_bytes(i) == flat_bank.to_bytes(i) == objects[i].to_bytes(), "diverged"
        if old_bank is not None:
            assert old_bank.to_bytes(i) == flat_bank.to_bytes(i), "baseline diverged"
    kernels = ""
    if old_bank is not None and SPEC.type == "ks_window":
        kernels = parts(flat_bank, old_bank, batches[0], per_batch, args.repeats)
    po = statistics.median(times["per_object"]) / events * 1e6
    bk = statistics.median(times["bank"]) / events * 1e6
    fl = statistics.median(times["flat"]) / events * 1e6
    old = statistics.median(times["baseline"]) / events * 1e6 if old_bank is not None else 0.0
    return {
        "kernels": kernels,
        "baseline_us": old,
        "models": models,
        "members": members,
        "per_batch": per_batch,
        "events": events,
        "per_object_us": po,
        "bank_us": bk,
        "flat_us": fl,
        "speedup": po / bk,
        "flat_speedup": po / fl,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--batch-events", type=int, default=18_000)
    parser.add_argument("--events-per-model", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--reference", type=int, default=1000, help="reference size")
    parser.add_argument("--window", type=int, default=1000, help="ks_window window")
    parser.add_argument("--detector", choices=sorted(BANKS), default="ks_window")
    parser.add_argument("--features", type=int, default=10, help="ks_window members per model")
    parser.add_argument("--baseline", help="another detectors/bank.py, timed as one more column")
    parser.add_argument("--clock", choices=["wall", "process"], default="wall")
    args = parser.parse_args()
    global SPEC, FEATURES, CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    FEATURES = args.features
    if args.detector == "rate_window":
        SPEC = RateWindowSpec(reference={"size": args.reference})
        FEATURES = 1
    elif args.detector == "quantile":
        SPEC = QuantileSpec(reference={"size": args.reference})
        FEATURES = 1
    else:
        SPEC = KSWindowSpec(reference={"size": args.reference}, window=args.window)
    print(
        f"{SPEC.type} x {FEATURES} signal(s) per model, reference {SPEC.reference.size}, window "
        f"{SPEC.window}, stride {SPEC.stride}; {args.batch_events} events per batch; "
        f"median of {args.repeats}, {args.clock} clock"
    )
    baseline = " baseline update_flat us/event |" if args.baseline else ""
    print(
        "| models | members | events/model/batch | per-object us/event "
        "| bank.update_many us/event | bank.update_flat us/event | speed-up (many / flat) |"
        + baseline
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if baseline else ""))
    kernels = []
    for models in args.models:
        r = bench(models, args)
        if r["kernels"]:
            kernels.append(f"{models:,} models: {r['kernels']}")
        print(
            f"| {r['models']:,} | {r['members']:,} | {r['per_batch']} | "
            f"{r['per_object_us']:.2f} | {r['bank_us']:.2f} | {r['flat_us']:.2f} | "
            f"{r['speedup']:.1f}x / {r['flat_speedup']:.1f}x |"
            + (f" {r['baseline_us']:.2f} |" if baseline else ""),
            flush=True,
        )
    for line in kernels:
        print(f"\nKernels ({args.clock} clock, median): {line}")


if __name__ == "__main__":
    main()
