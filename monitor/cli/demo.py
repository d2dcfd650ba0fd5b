"""The ``driftwarden demo`` subcommand: its arguments and how it runs (``register(sub)`` adds
it to the CLI's subparsers).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

__all__ = ["register"]

log = logging.getLogger(__name__)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from err
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0-65535, got {value}")
    return value


def _demo(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console

    from monitor.tools.demo import DemoOptions, configure_demo_logging, run_demo

    ui = not args.no_ui and sys.stdout.isatty()
    console = Console()
    configure_demo_logging(console, ui)
    options = DemoOptions(
        duration=args.duration,
        port=args.port,
        ui=ui,
        flags_file=Path(args.flags_file) if args.flags_file else None,
        webhook_url=args.webhook_url,
        rate_per_model=args.rate,
        keep_workdir=args.keep_workdir,
    )

    async def main() -> int:
        result = await run_demo(options, console=console)
        return result.exit_code

    try:
        import uvloop

        return int(uvloop.run(main()))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return int(asyncio.run(main()))


def register(sub: Any) -> None:
    """Add ``demo`` to the subparsers ``sub`` of the ``driftwarden`` parser."""
    demo = sub.add_parser(
        "demo",
        help="run a self-contained demo: broker, scripted incidents, daemon, live view",
        description="Start an embedded Kafka broker (Tansu), a traffic generator for three "
        "models with scripted incidents (feature drift, latency spike, error surge, "
        "engagement drop) and their recoveries, and the daemon with the flagd file backend "
        "and a console alert sink; show models, states, flags and alerts live. Ctrl-C ends "
        "it cleanly.",
    )
    demo.add_argument(
        "--duration",
        type=_positive,
        metavar="SECONDS",
        help="end after this many seconds of traffic; the four incidents, one at a time, "
        "take about 90 s (a longer run spaces them out, a shorter one plays those that fit); "
        "without it the script repeats until Ctrl-C",
    )
    demo.add_argument(
        "--port", type=_port, default=8080, help="status page port, 0 for a free one (8080)"
    )
    demo.add_argument(
        "--no-ui", action="store_true", help="plain log lines instead of the live table"
    )
    demo.add_argument(
        "--flags-file",
        metavar="PATH",
        help="the flagd JSON file to write (a temporary directory's by default)",
    )
    demo.add_argument(
        "--webhook-url",
        metavar="URL",
        help="also send alerts to this webhook, signed with DRIFTWARDEN_WEBHOOK_SECRET",
    )
    demo.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the run's temporary directory (audit log, broker log, config); "
        "it is removed at the end by default",
    )
    demo.add_argument(
        "--rate",
        type=_positive,
        default=200.0,
        metavar="EVENTS",
        help="events per second per model (200)",
    )
    demo.set_defaults(func=_demo)
