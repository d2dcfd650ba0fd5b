"""The engine with detector banks, this version's ``KSWindowBank`` against another version's,
in one process (issue 16: the KS kernels).

Two engines with banks get the same pre-decoded events (``bench/engine_hot.py``'s stream and
loop): untimed until every reference and window is full, then ``--repeats`` timed rounds in
which both apply each batch in turn. One engine's ``ks_window`` banks are built from the
``KSWindowBank`` of ``--baseline`` (another ``detectors/bank.py``; the other banks are this
version's); CPU time of the process (``time.process_time``) is what is timed. At the end
every detector's checkpoint is compared between the two engines byte for byte.

    git show 743ea28:detectors/bank.py > /tmp/bank_old.py
    PYTHONPATH=. python bench/bank_engine.py --baseline /tmp/bank_old.py --models 1000
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import detectors.bank
import monitor.engine.banks as engine_banks
from bench.engine_hot import _batches, _events, _states
from detectors.numeric import KSWindowSpec
from monitor.config.settings import load_settings
from monitor.engine.engine import Engine


def baseline_bank(path: str) -> Any:
    """The ``KSWindowBank`` class of another version of detectors/bank.py."""
    spec = importlib.util.spec_from_file_location("bank_baseline", path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    # The engine tells bank handles by this version's class; the handle only calls the bank.
    module.BankMember = detectors.bank.BankMember
    return module.KSWindowBank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="another detectors/bank.py")
    parser.add_argument("--policy", type=Path, default=Path("bench/policy_steady.yaml"))
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--fill", type=int, default=2_300, help="events per model, untimed")
    parser.add_argument("--timed", type=int, default=180_000, help="events per timed round")
    parser.add_argument("--batch", type=int, default=18_000, help="events per Engine.apply")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    classes = {"baseline": baseline_bank(args.baseline), "this": detectors.bank.KSWindowBank}
    settings = load_settings(args.policy)
    engines = {
        kind: Engine(settings.policy_for, max_models=args.models, banks=True) for kind in classes
    }

    def apply(kind: str, events: list[Any], now: float) -> None:
        # Banks are built when a model's first member is: only while its engine applies.
        engine_banks._BANK_OF[KSWindowSpec] = classes[kind]
        try:
            engines[kind].apply(events, now)
        finally:
            engine_banks._BANK_OF[KSWindowSpec] = detectors.bank.KSWindowBank

    total = args.fill * args.models + args.repeats * args.timed
    stream = _batches(_events(total, args.models, seed=7), args.batch)
    now = 0.0
    filled = 0
    for events in stream:
        now += 1.0
        for kind in engines:
            apply(kind, events, now)
        filled += len(events)
        if filled >= args.fill * args.models:
            break
    rates: dict[str, list[float]] = {kind: [] for kind in engines}
    for _ in range(args.repeats):
        stretch = []
        got = 0
        for events in stream:
            stretch.append(events)
            got += len(events)
            if got >= args.timed:
                break
        spent = dict.fromkeys(engines, 0.0)
        kinds = list(engines)
        for events in stretch:
            now += 1.0
            kinds.reverse()
            for kind in kinds:
                start = time.process_time()
                apply(kind, events, now)
                spent[kind] += time.process_time() - start
        for kind in engines:
            rates[kind].append(got / spent[kind])
    for engine in engines.values():
        engine.tick(now + 1.0)
    if _states(engines["baseline"]) != _states(engines["this"]):
        raise SystemExit("detector states differ between the two engines")
    old, new = (statistics.median(rates[kind]) for kind in ("baseline", "this"))
    print("| policy | models | events/batch | baseline banks events/s | banks events/s | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {args.policy.name} | {args.models:,} | {args.batch:,} | {old:,.0f} | {new:,.0f} "
        f"| {new / old:.2f}x |"
    )
    print("rounds:", {kind: [round(rate) for rate in v] for kind, v in rates.items()})


if __name__ == "__main__":
    main()
