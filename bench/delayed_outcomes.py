"""Delayed outcomes bench: a classifier whose accuracy falls from 95% to 75% with its inputs
and confidence unchanged, seen only in outcome events that arrive a minute after their
predictions, under a policy that names no signal (the model gains its ground-truth signals
when its outcomes come). How many outcome events after the change until the first
transition (the default ``for`` included), over seeds; transitions before the change.

``python bench/delayed_outcomes.py`` writes ``bench/results/delayed_outcomes.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from monitor.config.policy import ModelPolicy  # noqa: E402
from monitor.engine.engine import Engine  # noqa: E402
from monitor.engine.events import Event  # noqa: E402

#: Predictions (and outcomes) per second of the one model, one batch a second.
RATE = 20
#: Seconds between a prediction and its outcome.
DELAY_S = 60


def run(seed: int, before_s: int, after_s: int, policy: ModelPolicy) -> tuple[int, int | None, str]:
    """(transitions before the change, outcome events of changed predictions until the first
    transition after it or None, the signals that caused it)."""
    rng = np.random.default_rng(seed)
    engine = Engine(lambda model: policy, max_models=10)
    truth: dict[str, str] = {}
    sent: list[list[str]] = []
    false_alarms = 0
    changed_outcomes = 0
    for second in range(before_s + after_s):
        accuracy = 0.95 if second < before_s else 0.75
        events = []
        ids = []
        for i in range(RATE):
            rid = f"{second}-{i}"
            y = "fraud" if rng.random() < 0.3 else "ok"
            guess = y if rng.random() < accuracy else ("ok" if y == "fraud" else "fraud")
            truth[rid] = y
            ids.append(rid)
            events.append(
                Event(
                    model="m",
                    request_id=rid,
                    prediction=guess,
                    confidence=float(rng.beta(40, 2)),
                    features={"amount": float(rng.lognormal(3, 1))},
                )
            )
        sent.append(ids)
        if second >= DELAY_S:
            answered = sent[second - DELAY_S]
            events += [Event(model="m", request_id=r, label=truth.pop(r)) for r in answered]
            if second - DELAY_S >= before_s:
                changed_outcomes += len(answered)
        transitions = engine.apply(events, float(second))
        if transitions:
            if second - DELAY_S < before_s:
                false_alarms += len(transitions)
            else:
                causes = sorted({c.signal for t in transitions for c in t.causes})
                return false_alarms, changed_outcomes, ", ".join(causes)
    return false_alarms, None, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--before-s", type=int, default=3_000, help="seconds before the change")
    parser.add_argument("--after-s", type=int, default=600)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "delayed_outcomes.md"
    )
    args = parser.parse_args(argv)
    policy = ModelPolicy()  # names no signal: watches what the events carry
    started = time.perf_counter()
    rows = [run(seed, args.before_s, args.after_s, policy) for seed in range(args.seeds)]
    caught = [delay for _, delay, _ in rows if delay is not None]
    within = sum(1 for delay in caught if delay <= 2_000)
    out = [
        "# Delayed outcomes",
        "",
        f"`python bench/delayed_outcomes.py --seeds {args.seeds} --before-s {args.before_s} "
        f"--after-s {args.after_s}`: one model, {RATE} predictions a second, each outcome "
        f"{DELAY_S} s after its prediction; accuracy 95% -> 75% after {args.before_s} s "
        "(inputs and confidence unchanged); the policy names no signal: the model discovers "
        "its signals from its first events (feature, prediction, confidence, error) and gains "
        "`label_error` (degraded) and `estimated_accuracy` once its outcomes come; default "
        "`for` (30 s, 600 outcome events at this rate) included.",
        "",
        "| seed | transitions before the change | outcome events after the change until "
        "caught | by |",
        "| ---: | ---: | ---: | --- |",
    ]
    out += [
        f"| {seed} | {alarms} | {'missed' if delay is None else delay} | {by} |"
        for seed, (alarms, delay, by) in enumerate(rows)
    ]
    out += [
        "",
        f"Caught within 2,000 outcome events in {within} of {args.seeds} seeds "
        f"(median {int(np.median(caught)) if caught else 'n/a'}); transitions before the "
        f"change: {sum(alarms for alarms, _, _ in rows)} in "
        f"{args.seeds * args.before_s * RATE:,} predictions. "
        f"{time.perf_counter() - started:.0f} s.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
