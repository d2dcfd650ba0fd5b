"""The ``driftwarden`` command line: run, check-config, demo, replay, record, explain."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from monitor import __version__
from monitor.errors import ConfigError

__all__ = ["main"]

log = logging.getLogger(__name__)

EXIT_CONFIG = 2


def _run(args: argparse.Namespace) -> int:
    from monitor.config.settings import load_settings
    from monitor.daemon.daemon import Daemon
    from monitor.observability.logs import configure_logging

    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        print("driftwarden: refusing to start with an invalid configuration", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.lifecycle.log_format, settings.lifecycle.log_level)

    async def main() -> int:
        daemon = Daemon(settings)
        daemon.install_signal_handlers()
        return await daemon.run()

    return _run_loop(main())


def _run_loop(coro: object) -> int:
    try:
        import uvloop

        return int(uvloop.run(coro))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return int(asyncio.run(coro))  # type: ignore[arg-type]


def _check_config(args: argparse.Namespace) -> int:
    from monitor.config.settings import load_settings

    failed = False
    for path in args.files:
        try:
            settings = load_settings(path)
        except ConfigError as err:
            failed = True
            for line in err.problems:
                print(line)
            continue
        print(f"{path}: ok ({len(settings.models)} model policies)")
    return EXIT_CONFIG if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftwarden",
        description=(
            "Watch AI inference events on Kafka, detect drift and health breaks per model, "
            "page on-call and flip feature flags so the product degrades gracefully."
        ),
    )
    parser.add_argument("--version", action="version", version=f"driftwarden {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the daemon",
        description="Run the daemon until SIGTERM/SIGINT. Every scalar setting can be "
        "overridden from the environment, e.g. DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS.",
    )
    run.add_argument("--config", "-c", metavar="FILE", help="settings and policy YAML file")
    run.set_defaults(func=_run)

    check = sub.add_parser(
        "check-config",
        help="validate settings/policy files (exit 0 valid, 2 invalid)",
        description="Validate each file; print one line per error with the file and line "
        "(or the environment variable), the field path and what was expected. Environment "
        "overrides apply as they would at run time. An empty file is an error.",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=_check_config)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[Any], None]]:
    # Imported lazily: `driftwarden run` should not pay for the report and demo modules.
    from monitor.cli import demo as cli_demo
    from monitor.cli import explain as cli_explain
    from monitor.cli import record as cli_record
    from monitor.cli import replay as cli_replay

    return [cli_demo.register, cli_replay.register, cli_record.register, cli_explain.register]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_CONFIG
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
