"""The ``record`` subcommand: dump a topic (or a time range of it) to JSON lines for replay.
``register`` adds it to the ``driftwarden`` parser.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime

from monitor.cli.replay import EXIT_CONFIG, EXIT_INPUT, progress_enabled
from monitor.errors import ConfigError, DriftwardenError

__all__ = ["record_command", "register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``record`` to the ``driftwarden`` subcommands."""
    record = sub.add_parser(
        "record",
        help="dump a topic (or a time range of it) to JSON lines for replay",
        description=(
            "Read a topic without joining a consumer group and write its record values as "
            "JSON lines (gzip when --out ends in .gz). Stops at the end seen at start, at "
            "--to, or after --max values. --from/--to are record timestamps."
        ),
    )
    record.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="default: --config's")
    record.add_argument("--config", "-c", metavar="FILE", help="settings (kafka security)")
    record.add_argument("--topic", "-t", required=True)
    record.add_argument("--from", dest="from_", metavar="TIME", help="RFC 3339 or epoch s")
    record.add_argument("--to", metavar="TIME", help="RFC 3339 or epoch seconds")
    record.add_argument("--max", type=int, metavar="N", help="stop after N values")
    record.add_argument("--out", "-o", required=True, metavar="FILE", help=".jsonl or .jsonl.gz")
    record.add_argument(
        "--idle",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="a partition past its end is done after this long without data (default 2)",
    )
    record.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    record.set_defaults(func=record_command)


def _time_ms(text: str) -> int:
    """Epoch milliseconds from epoch seconds or an RFC 3339 time.

    >>> _time_ms("1700000000"), _time_ms("2023-11-14T22:13:20Z")
    (1700000000000, 1700000000000)
    """
    try:
        return round(float(text) * 1000)
    except ValueError:
        pass
    try:
        return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError as err:
        raise ValueError(f"{text!r} is neither epoch seconds nor an RFC 3339 time") from err


def record_command(args: argparse.Namespace) -> int:
    from monitor.config.settings import KafkaSettings, load_settings
    from monitor.tools.record import TopicRecorder

    try:
        kafka = load_settings(args.config).kafka if args.config else KafkaSettings()
    except ConfigError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    options = kafka.client_options()
    if args.bootstrap_servers:
        options["bootstrap_servers"] = args.bootstrap_servers
    try:
        from_ms = _time_ms(args.from_) if args.from_ else None
        to_ms = _time_ms(args.to) if args.to else None
        recorder = TopicRecorder(
            options,
            args.topic,
            from_ms=from_ms,
            to_ms=to_ms,
            max_records=args.max,
            idle_s=args.idle,
            timeout_s=kafka.broker_timeout_s,
        )
    except ValueError as err:
        print(f"driftwarden record: {err}", file=sys.stderr)
        return EXIT_CONFIG
    show = progress_enabled(args.quiet)

    def progress(written: int) -> None:
        if show:
            print(f"\rrecorded {written}", end="", file=sys.stderr, flush=True)

    async def main() -> int:
        async with recorder:
            stats = await recorder.run(args.out, progress=progress)
        if show:
            print(file=sys.stderr)
        print(
            f"recorded {stats.written} values from {stats.partitions} partitions of "
            f"{args.topic} to {args.out} in {stats.elapsed_s:.1f} s "
            f"({stats.skipped} non-JSON values skipped)"
        )
        return 0

    try:
        return asyncio.run(main())
    except DriftwardenError as err:
        print(f"driftwarden record: {err}", file=sys.stderr)
        return EXIT_INPUT
