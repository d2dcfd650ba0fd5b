"""The ``replay`` subcommand: run a policy over recorded events offline and report what it
would have done. ``register`` adds it to the ``driftwarden`` parser.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from monitor.config.policy import parse_duration
from monitor.errors import ConfigError

__all__ = ["print_comparison", "print_summary", "progress_enabled", "register", "replay_command"]

log = logging.getLogger(__name__)

EXIT_CONFIG = 2
EXIT_INPUT = 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``replay`` to the ``driftwarden`` subcommands."""
    replay = sub.add_parser(
        "replay",
        help="run a policy over recorded events offline, report what it would have done",
        description=(
            "Replay recorded events (JSON lines, gzip or not, '-' for stdin) through the "
            "policies of --config on event time, without Kafka. Prints transitions, flags "
            "that would flip and alerts that would fire; writes an HTML report and, with "
            "--summary, a JSON summary (shape: docs/replay.md). Bad lines are reported by "
            "number and skipped. With --truth, scores the policy against known incidents. "
            "With --compare, replays the same events under a second settings file too and "
            "writes the two side by side, with their scores."
        ),
    )
    replay.add_argument("events", metavar="EVENTS", help="JSON-lines file (.jsonl, .jsonl.gz)")
    replay.add_argument("--config", "-c", metavar="FILE", required=True, help="policy YAML")
    replay.add_argument("--summary", metavar="FILE", help="write the JSON summary here")
    replay.add_argument(
        "--report",
        metavar="FILE",
        default="driftwarden-replay.html",
        help="HTML report path (default: %(default)s)",
    )
    replay.add_argument("--no-report", action="store_true", help="write no HTML report")
    replay.add_argument("--truth", metavar="FILE", help="known incident windows (JSON lines)")
    replay.add_argument(
        "--compare",
        metavar="OTHER_POLICY",
        help="also replay under this settings file; the report shows both side by side",
    )
    replay.add_argument(
        "--grace",
        metavar="DURATION",
        default="0s",
        help="a detection up to this long after an incident's end still counts (default 0s)",
    )
    replay.add_argument(
        "--chunk",
        metavar="K",
        type=int,
        default=None,
        help="events of one model applied at once; transitions are attributed to the "
        "chunk's last line (default 16)",
    )
    replay.add_argument(
        "--exact", action="store_true", help="chunk size 1: exact attribution, slower"
    )
    replay.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    replay.set_defaults(func=replay_command)


def progress_enabled(quiet: bool) -> bool:
    """Whether to draw a progress display on stderr: a terminal and no ``--quiet``."""
    return not quiet and sys.stderr.isatty()


def replay_command(args: argparse.Namespace) -> int:
    from monitor.config.settings import load_settings
    from monitor.tools.replay import DEFAULT_CHUNK, Replay, load_truth, open_events
    from monitor.tools.report import write_comparison, write_report

    compare = getattr(args, "compare", None)
    if compare is not None and args.events == "-":
        print(
            "driftwarden replay: --compare reads EVENTS twice: give a file, not -", file=sys.stderr
        )
        return EXIT_CONFIG
    try:
        settings = load_settings(args.config)
        other = load_settings(compare) if compare is not None else None
        truth = load_truth(args.truth) if args.truth else None
        grace = parse_duration(args.grace)
    except ConfigError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as err:
        print(f"driftwarden replay: --grace: {err}", file=sys.stderr)
        return EXIT_CONFIG
    chunk = 1 if args.exact else (args.chunk if args.chunk is not None else DEFAULT_CHUNK)
    if chunk < 1:
        print(f"driftwarden replay: --chunk must be at least 1, got {chunk}", file=sys.stderr)
        return EXIT_CONFIG
    results = []
    for current in (settings, other) if other is not None else (settings,):
        replay = Replay(current, chunk_size=chunk, truth=truth, grace=grace)
        try:
            raw = sys.stdin.buffer if args.events == "-" else Path(args.events).open("rb")  # noqa: SIM115
        except OSError as err:
            print(f"driftwarden replay: cannot read {args.events}: {err.strerror}", file=sys.stderr)
            return EXIT_INPUT
        try:
            with raw, open_events(raw) as stream:
                results.append(_run_with_progress(replay, stream, raw, args))
        except (OSError, EOFError) as err:
            # A truncated or corrupt gzip member: the lines before it were replayed, but the
            # summary would silently describe part of the file.
            print(f"driftwarden replay: {args.events}: {err}", file=sys.stderr)
            return EXIT_INPUT
    result = results[0]
    for label, found in zip((args.config, compare), results, strict=False):
        for warning in found.warnings:
            # Loud: a stuck clock makes "no transition" look like a healthy verdict.
            where = f" ({label})" if len(results) == 2 else ""
            print(f"driftwarden replay: WARNING{where}: {warning['message']}", file=sys.stderr)
    try:
        print_summary(result.summary(), sys.stdout)
        if len(results) == 2:
            print_comparison(results[0], results[1], (args.config, compare or ""), sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # `| head`: the reader left. Still write the files asked for, silently.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    if args.summary:
        Path(args.summary).write_text(
            json.dumps(result.summary(), indent=2, allow_nan=False, default=_json_default) + "\n",
            encoding="utf-8",
        )
    if not args.no_report:
        if len(results) == 2:
            labels = (str(args.config), str(compare))
            write_comparison(results[0], results[1], args.report, labels=labels)
        else:
            write_report(result, args.report)
        print(f"report: {args.report}")
    return 0


def _json_default(value: object) -> Any:
    raise TypeError(f"not JSON serializable: {value!r}")


def _run_with_progress(replay: Any, stream: Any, raw: Any, args: argparse.Namespace) -> Any:
    if not progress_enabled(args.quiet) or args.events == "-":
        return replay.run(iter(stream), source=args.events)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    total = Path(args.events).stat().st_size
    columns = (
        TextColumn("replay"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}% {task.fields[lines]} lines"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("replay", total=total, lines=0)

        def hook(lines: int) -> None:
            bar.update(task, completed=raw.tell(), lines=lines)

        return replay.run(iter(stream), source=args.events, progress=hook)


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    """The human summary of a replay: per model, transitions, flags, alerts, per signal."""
    run = summary["run"]
    rate = run["events_per_s"]
    out.write(
        f"replayed {summary['events']} events from {summary['source']} "
        f"({summary['bad_lines']} bad lines) in {run['elapsed_s']:.2f} s"
        + (f": {rate:,.0f} events/s" if rate is not None else "")
        + f" (chunk {summary['chunk_size']})\n"
    )
    if summary["dropped_events"]:
        out.write(f"  {summary['dropped_events']} events dropped: engine.max_models reached\n")
    for model, entry in summary["models"].items():
        out.write(
            f"\n{model} ({entry['mode']}, {entry['events']} events): "
            f"{len(entry['transitions'])} transitions, final state {entry['final_state']}\n"
        )
        for t in entry["transitions"]:
            why = ", ".join(t["signals"]) or "every signal healthy"
            out.write(
                f"  line {t['index']:>9}  {_ts(t['ts'])}  {t['from']} -> {t['to']}  ({why})\n"
            )
        for f in entry["flags"]:
            what = f"= {f['value']!r}" if f["action"] == "set" else "to its prior value"
            out.write(f"  line {f['index']:>9}  flag {f['flag']} {f['action']} {what}\n")
        for a in entry["alerts"]:
            out.write(
                f"  line {a['index']:>9}  alert {a['action']} severity={a['severity']} "
                f"state={a['state']}\n"
            )
        for signal, counts in entry["signals"].items():
            out.write(
                f"    {signal}: {counts['transitions']} transitions, {counts['alerts']} alerts\n"
            )
    if summary["bad_lines"]:
        out.write(f"\nbad lines ({summary['bad_lines']}, 0-based):\n")
        for bad in summary["bad"][:20]:
            out.write(f"  line {bad['line']}: {bad['reason']}: {bad['detail']}\n")
        if summary["bad_lines"] > 20:
            out.write(f"  ... {summary['bad_lines'] - 20} more (see --summary)\n")
    score = summary.get("score")
    if score is not None:
        out.write(f"\nscore against {score['incidents']} incidents (grace {score['grace_s']}s):\n")
        out.write(f"  {'':<28}{'false alarms':>13}{'misses':>8}{'mean delay s':>14}\n")
        for model, entry in score["models"].items():
            scopes = [(model, entry)] + [
                (f"  {name}", row) for name, row in entry["signals"].items()
            ]
            for scope, row in scopes:
                for name in ("policy", "never_fire", "always_fire"):
                    s = row[name]
                    mean = s["delay_s"]["mean"]
                    label = f"{scope} [{name.replace('_', '-')}]"
                    out.write(
                        f"  {label:<28}{s['false_alarms']:>13}{s['misses']:>8}"
                        f"{'-' if mean is None else f'{mean:.3g}':>14}\n"
                    )


def print_comparison(first: Any, second: Any, labels: tuple[str, str], out: TextIO) -> None:
    """Each model's scores under the two policies, one line per score."""
    from monitor.tools.report import comparison_rows

    out.write(f"\ncompared: A {labels[0]}  B {labels[1]}\n")
    out.write(f"  {'model':<20}{'score':<24}{'A':>12}{'B':>12}\n")
    for model, name, a, b in comparison_rows(first, second):
        out.write(f"  {model:<20}{name:<24}{a:>12}{b:>12}\n")


def _ts(ts: float) -> str:
    from monitor.tools.report import format_time

    return format_time(ts)
