"""`driftwarden demo`: an embedded broker, scripted traffic of three models, the daemon with
the flagd file backend and a console alert sink, a live terminal view and a closing summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from monitor.consumer import ensure_topics
from monitor.daemon import Daemon
from monitor.embedded_broker import EmbeddedBroker
from monitor.metrics import Metrics
from monitor.policy import Level
from monitor.settings import Settings, load_settings
from monitor.status_page import add_routes
from monitor.traffic import DEMO_SCRIPT, SCRIPT_PERIOD_S, Incident, TrafficGenerator

__all__ = [
    "Demo",
    "DemoOptions",
    "IncidentReport",
    "IncidentTracker",
    "demo_config",
    "read_flags",
    "run_demo",
]

log = logging.getLogger(__name__)

#: Ctrl-C asks for a clean stop; a second one forces it. SIGTERM does the same.
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

TOPIC = "inference-events"
PARTITIONS = 3
#: An incident not detected this long after it started counts as missed in the summary.
DETECTION_DEADLINE_S = 10.0
#: The page linked from the daemon's alerts about its own outputs (flag backend down).
SELF_RUNBOOK_URL = (
    "https://github.com/driftwarden/driftwarden/blob/main/docs/runbooks/FlagBackendDown.md"
)
STATE_STYLE = {"ok": "green", "warn": "yellow", "degraded": "dark_orange", "critical": "bold red"}


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``driftwarden demo`` was asked for."""

    #: Stop by itself after this many seconds of traffic; None runs until Ctrl-C.
    duration: float | None = None
    #: The status page's port; 0 picks a free one.
    port: int = 8080
    #: A rich live table (True) or plain log lines (False, for CI and pipes).
    ui: bool = True
    #: The flagd file the daemon writes; a temporary directory's when None.
    flags_file: Path | None = None
    #: Also send alerts to this webhook (signed with ``DRIFTWARDEN_WEBHOOK_SECRET``).
    webhook_url: str | None = None
    rate_per_model: float = 200.0
    #: Install SIGINT/SIGTERM handlers (the CLI does; a caller with its own handling not).
    handle_signals: bool = True


def demo_policy_text() -> str:
    """The embedded demo policy (package data)."""
    return resources.files("monitor").joinpath("embedded/demo_policy.yaml").read_text("utf-8")


def demo_config(
    bootstrap_servers: str,
    *,
    http_port: int,
    flags_file: Path,
    audit_log: Path | None = None,
    webhook_url: str | None = None,
) -> dict[str, Any]:
    """The demo's settings: the embedded policy with this run's broker, port, flags and sinks.

    >>> config = demo_config("127.0.0.1:1", http_port=0, flags_file=Path("/tmp/f.json"))
    >>> config["kafka"]["bootstrap_servers"], config["http"]["port"], sorted(config["models"])
    ('127.0.0.1:1', 0, ['chat-assistant', 'default', 'fraud-scorer', 'search-ranker'])
    """
    config: dict[str, Any] = yaml.safe_load(demo_policy_text())
    config["kafka"]["bootstrap_servers"] = bootstrap_servers
    config["http"]["port"] = http_port
    # Settings gained flag backends and alert sinks with the actions wiring; older trees
    # lack the sections, and the demo still shows states then.
    fields = Settings.model_fields
    if "flags" in fields:
        config["flags"] = {"type": "flagd_file", "path": str(flags_file)}
    if "alerts" in fields:
        sinks: list[dict[str, Any]] = [{"type": "console", "output": "log"}]
        if webhook_url is not None:
            sinks.append({"type": "webhook", "url": webhook_url})
        config["alerts"] = {"sinks": sinks, "self_runbook_url": SELF_RUNBOOK_URL}
    if "actions" in fields and audit_log is not None:
        config["actions"] = {"audit_log": str(audit_log)}
    return config


def read_flags(path: Path) -> dict[str, Any]:
    """Each flag's current value in a flagd file (its ``defaultVariant``'s value).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "flags.json"
    >>> read_flags(p)
    {}
    >>> _ = p.write_text('{"flags": {"f": {"variants": {"on": true, "off": false},'
    ...                  ' "defaultVariant": "off", "state": "ENABLED"}}}')
    >>> read_flags(p)
    {'f': False}
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        # Missing, or caught mid-write by a non-atomic writer: no flags to show this time.
        return {}
    flags = document.get("flags") if isinstance(document, dict) else None
    values: dict[str, Any] = {}
    for name, definition in (flags or {}).items():
        if isinstance(definition, dict):
            variants = definition.get("variants") or {}
            variant = definition.get("defaultVariant")
            if isinstance(variants, dict) and variant in variants:
                values[name] = variants[variant]
    return values


def seed_flags(path: Path, script: tuple[Incident, ...]) -> None:
    """Define each scripted flag with its healthy and its degraded variant, as the services
    that read the flags would; a flag the file already defines is left as it is."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        document = {"$schema": "https://flagd.dev/schema/v0/flags.json", "flags": {}}
    flags = document.setdefault("flags", {})
    for incident in script:
        if incident.flag in flags:
            continue
        if isinstance(incident.healthy, bool):
            variants: dict[str, Any] = {"on": True, "off": False}
            default = "on" if incident.healthy else "off"
        else:
            variants = {
                str(incident.healthy): incident.healthy,
                str(incident.value): incident.value,
            }
            default = str(incident.healthy)
        flags[incident.flag] = {"state": "ENABLED", "variants": variants, "defaultVariant": default}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.seed")
    tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass(slots=True)
class IncidentReport:
    """What happened to one occurrence of a scripted incident (seconds after traffic start)."""

    incident: Incident
    cycle: int
    started_at: float
    detected_at: float | None = None
    flipped_at: float | None = None
    recovered_at: float | None = None
    restored_at: float | None = None
    worst: str = "ok"

    @property
    def detected(self) -> bool:
        return self.detected_at is not None

    @property
    def flipped(self) -> bool:
        return self.flipped_at is not None

    @property
    def recovered(self) -> bool:
        return self.recovered_at is not None

    @property
    def restored(self) -> bool:
        return self.restored_at is not None

    def line(self) -> str:
        def at(t: float | None) -> str:
            return "-" if t is None else f"{t - self.started_at:+.1f}s"

        i = self.incident
        return (
            f"{i.name}: detected {at(self.detected_at)} ({self.worst}), "
            f"flag {i.flag}={json.dumps(i.value)} {at(self.flipped_at)}, "
            f"recovered {at(self.recovered_at)}, restored {at(self.restored_at)}"
        )


class IncidentTracker:
    """Follows the script against what the daemon did: each incident's model state reaching
    the incident's level and coming back to ok, and its flag flipping and being restored.

    >>> from monitor.traffic import Incident
    >>> inc = Incident("m", "error_surge", 1.0, 3.0, "m-on", False, True, "critical")
    >>> t = IncidentTracker((inc,), period_s=None)
    >>> t.observe(0.5, {"m": "critical"}, {"m-on": False})  # before it started: not counted
    >>> t.observe(2.0, {"m": "critical"}, {"m-on": False})
    >>> t.observe(6.0, {"m": "ok"}, {"m-on": True})
    >>> r = t.reports[0]
    >>> r.detected_at, r.flipped_at, r.recovered_at, r.restored_at
    (2.0, 2.0, 6.0, 6.0)
    """

    def __init__(self, script: tuple[Incident, ...], *, period_s: float | None) -> None:
        self.script = script
        self.period_s = period_s
        self.reports: list[IncidentReport] = []
        self._open: dict[tuple[int, int], IncidentReport] = {}

    def observe(self, elapsed: float, states: dict[str, str], flags: dict[str, Any]) -> None:
        cycle = int(elapsed // self.period_s) if self.period_s else 0
        offset = cycle * self.period_s if self.period_s else 0.0
        for index, incident in enumerate(self.script):
            key = (cycle, index)
            if key not in self._open and elapsed >= offset + incident.start_s:
                report = IncidentReport(incident, cycle, offset + incident.start_s)
                self._open[key] = report
                self.reports.append(report)
        for report in self.reports:
            self._update(report, elapsed, states, flags)

    @staticmethod
    def _update(
        report: IncidentReport, elapsed: float, states: dict[str, str], flags: dict[str, Any]
    ) -> None:
        incident = report.incident
        state = states.get(incident.model, "ok")
        if report.recovered_at is None:
            if Level.parse(state) > Level.parse(report.worst):
                report.worst = state
            if report.detected_at is None and Level.parse(state) >= Level.parse(incident.level):
                report.detected_at = elapsed
            elif report.detected_at is not None and state == "ok":
                report.recovered_at = elapsed
        if incident.flag in flags:
            value = flags[incident.flag]
            same = type(value) is type(incident.value) and value == incident.value
            if report.flipped_at is None and same:
                report.flipped_at = elapsed
            elif report.flipped_at is not None and report.restored_at is None and not same:
                healthy = type(value) is type(incident.healthy) and value == incident.healthy
                if healthy:
                    report.restored_at = elapsed


@dataclass(slots=True)
class DemoResult:
    exit_code: int
    reports: list[IncidentReport] = field(default_factory=list)
    flags_file: Path | None = None
    url: str | None = None
    events_produced: int = 0
    events_applied: int = 0
    #: Each model's state when the demo ended.
    final_states: dict[str, str] = field(default_factory=dict)
    #: Each flag's value when the demo ended.
    final_flags: dict[str, Any] = field(default_factory=dict)
    #: The daemon's audit trail (JSON lines), in the demo's working directory.
    audit_log: Path | None = None


class Demo:
    """One demo run: broker, daemon, traffic and the view, shut down in reverse order."""

    def __init__(self, options: DemoOptions, *, console: Console | None = None) -> None:
        self.options = options
        self.console = console if console is not None else Console()
        self.script = DEMO_SCRIPT
        period = None if options.duration is not None else SCRIPT_PERIOD_S
        self.tracker = IncidentTracker(self.script, period_s=period)
        self.period_s = period
        self.broker: EmbeddedBroker | None = None
        self.daemon: Daemon | None = None
        self.traffic: TrafficGenerator | None = None
        self.flags_file: Path | None = None
        self.url: str | None = None
        self._stop = asyncio.Event()
        self._forced = False
        self._daemon_task: asyncio.Task[int] | None = None
        self._last_flags: dict[str, Any] = {}
        self._last_states: dict[str, str] = {}
        self.audit_log: Path | None = None

    # ------------------------------------------------------------------ control

    def request_stop(self, reason: str = "requested") -> None:
        if not self._stop.is_set():
            log.info("demo: stopping (%s)", reason)
        self._stop.set()

    def handle_exit(self, sig: int) -> None:
        if self._stop.is_set():
            # Second Ctrl-C: do not wait for the daemon's graceful shutdown.
            self._forced = True
            if self._daemon_task is not None:
                self._daemon_task.cancel()
            return
        self.request_stop(signal.Signals(sig).name)

    @property
    def ready(self) -> bool:
        """The daemon consumes and the traffic flows."""
        return self.traffic is not None and self.traffic.started_at is not None

    # ------------------------------------------------------------------ run

    async def run(self) -> DemoResult:
        opts = self.options
        loop = asyncio.get_running_loop()
        if opts.handle_signals:
            for sig in HANDLED_SIGNALS:
                loop.add_signal_handler(sig, self.handle_exit, sig)
        workdir = Path(tempfile.mkdtemp(prefix="driftwarden-demo-"))
        exit_code = 0
        try:
            exit_code = await self._run(workdir)
        finally:
            await self._shutdown()
            if opts.handle_signals:
                for sig in HANDLED_SIGNALS:
                    loop.remove_signal_handler(sig)
        if self._forced:
            exit_code = 1
        return DemoResult(
            exit_code,
            self.tracker.reports,
            self.flags_file,
            self.url,
            self.traffic.produced if self.traffic else 0,
            self.daemon.applied_events if self.daemon else 0,
            dict(self._last_states),
            read_flags(self.flags_file) if self.flags_file else {},
            self.audit_log,
        )

    async def _run(self, workdir: Path) -> int:
        opts = self.options
        say = self._say
        say(f"driftwarden demo: working directory {workdir}")
        self.broker = EmbeddedBroker(log_path=workdir / "tansu.log")
        await self.broker.start()
        say(f"embedded Kafka broker (Tansu) on {self.broker.bootstrap_servers}")

        self.flags_file = opts.flags_file or workdir / "flags.json"
        seed_flags(self.flags_file, self.script)
        self.audit_log = workdir / "audit.jsonl"
        if opts.webhook_url and not os.environ.get("DRIFTWARDEN_WEBHOOK_SECRET"):
            # The webhook sink signs every request; a throwaway key is enough for a demo.
            os.environ["DRIFTWARDEN_WEBHOOK_SECRET"] = secrets.token_hex(16)
            say(
                "webhook: signing with a generated key (set DRIFTWARDEN_WEBHOOK_SECRET to pick one)"
            )
        config = demo_config(
            self.broker.bootstrap_servers,
            http_port=opts.port,
            flags_file=self.flags_file,
            audit_log=self.audit_log,
            webhook_url=opts.webhook_url,
        )
        config_path = workdir / "demo-config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        settings = load_settings(config_path)
        await ensure_topics(
            settings.kafka, {TOPIC: {"partitions": PARTITIONS}}, settings.kafka.broker_timeout_s
        )

        self.daemon = daemon = Daemon(settings, metrics=Metrics.create(CollectorRegistry()))
        add_routes(daemon.http.app, daemon)
        self._daemon_task = asyncio.create_task(daemon.run(), name="demo-daemon")
        if not await self._wait(lambda: not daemon.readiness_problems(), 60.0):
            if self._stop.is_set():
                return 0
            task = self._daemon_task
            if task.done() and not task.cancelled() and task.exception() is not None:
                err = task.exception()
                problems = f"{err}"
                if isinstance(err, OSError) and err.errno == errno.EADDRINUSE:
                    problems += " (pick another --port, or --port 0 for a free one)"
            else:
                problems = ", ".join(daemon.readiness_problems())
            say(f"driftwarden demo: the daemon did not start: {problems}")
            return 1
        self.url = f"http://127.0.0.1:{daemon.http.bound_port}/"
        say(f"status page: {self.url}   flags: {self.flags_file}   config: {config_path}")

        self.traffic = TrafficGenerator(
            self.broker.bootstrap_servers,
            TOPIC,
            rate_per_model=opts.rate_per_model,
            script=self.script,
            period_s=self.period_s,
        )
        await self.traffic.start()
        if opts.ui:
            await self._live_view()
        else:
            await self._plain_view()
        return 0 if not self._daemon_failed() else 1

    def _daemon_failed(self) -> bool:
        task = self._daemon_task
        return task is not None and task.done() and not task.cancelled() and task.result() != 0

    async def _wait(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self._stop.is_set() or (self._daemon_task and self._daemon_task.done()):
                return False
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _finished(self) -> bool:
        if self._stop.is_set():
            return True
        if self._daemon_task is not None and self._daemon_task.done():
            return True
        duration = self.options.duration
        return (
            duration is not None and self.traffic is not None and (self.traffic.elapsed >= duration)
        )

    async def _tick(self, interval_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), interval_s)

    def observe(self) -> dict[str, Any]:
        """Read the daemon's status and the flags file; feed the tracker; return the status."""
        assert self.daemon is not None and self.traffic is not None
        assert self.flags_file is not None
        status = self.daemon.status()
        states = {m: d["state"] for m, d in status["models"].items()}
        flags = read_flags(self.flags_file)
        self.tracker.observe(self.traffic.elapsed, states, flags)
        self._last_flags, self._last_states = flags, states
        return status

    async def _plain_view(self) -> None:
        last_line = 0.0
        seen_flags: dict[str, Any] = {}
        seen_states: dict[str, str] = {}
        while not self._finished():
            status = self.observe()
            elapsed = self.traffic.elapsed if self.traffic else 0.0
            for model, state in self._last_states.items():
                if seen_states.get(model, "ok") != state:
                    self._say(
                        f"[{elapsed:5.1f}s] {model}: {seen_states.get(model, 'ok')} -> {state}"
                    )
            for flag, value in self._last_flags.items():
                if flag in seen_flags and seen_flags[flag] != value:
                    self._say(f"[{elapsed:5.1f}s] flag {flag}: {seen_flags[flag]!r} -> {value!r}")
            seen_flags, seen_states = dict(self._last_flags), dict(self._last_states)
            if elapsed - last_line >= 5.0:
                last_line = elapsed
                active = ", ".join(i.name for i in self.traffic.active()) if self.traffic else ""
                self._say(
                    f"[{elapsed:5.1f}s] applied {status['applied_events']} events; "
                    f"incidents now: {active or 'none'}"
                )
            await self._tick(0.25)

    async def _live_view(self) -> None:
        with Live(
            self.render(self.observe()),
            console=self.console,
            auto_refresh=False,
            transient=False,
        ) as live:
            while not self._finished():
                await self._tick(0.5)
                live.update(self.render(self.observe()), refresh=True)

    # ------------------------------------------------------------------ the view

    def render(self, status: dict[str, Any]) -> Group:
        """The live view: one row per model, then the script, alerts and recent actions."""
        table = Table(title="driftwarden demo", expand=True, title_justify="left")
        for column in ("model", "state", "signals", "flags", "last action"):
            table.add_column(column, overflow="fold")
        actions = status.get("actions") or {}
        recent = list(actions.get("recent") or [])
        for model, described in sorted(status["models"].items()):
            state = described["state"]
            signals = Text()
            for name, sig in described["signals"].items():
                reading: dict[str, Any] = next(iter(sig["readings"].values()), {})
                value = reading.get("statistic")
                shown = "…" if value is None else f"{value:.3g}"
                signals.append(f"{name}={shown} ", style=STATE_STYLE.get(sig["level"], ""))
            flags = Text()
            for incident in self.script:
                if incident.model == model and incident.flag in self._last_flags:
                    value = self._last_flags[incident.flag]
                    changed = value != incident.healthy
                    flags.append(
                        f"{incident.flag}={json.dumps(value)} ",
                        style="bold magenta" if changed else "dim",
                    )
            last = next((e for e in reversed(recent) if e.get("model") == model), None)
            table.add_row(
                model,
                Text(state.upper(), style=STATE_STYLE.get(state, "")),
                signals,
                flags,
                _describe_action(last) if last else "",
            )
        traffic = self.traffic
        elapsed = traffic.elapsed if traffic else 0.0
        script = Text(f"t={elapsed:5.1f}s  ")
        active = traffic.active() if traffic else []
        script.append(
            "incidents now: " + (", ".join(i.name for i in active) if active else "none"),
            style="bold red" if active else "green",
        )
        if self.options.duration is not None:
            script.append(f"   (ends at {self.options.duration:.0f}s)")
        alerts = actions.get("alerts") or []
        if alerts:
            alert_text = Text("\n".join(_describe_alert(a) for a in alerts[-6:]), style="red")
        else:
            alert_text = Text("no alert firing", style="green")
        recent_text = Text("\n".join(_describe_action(e) for e in recent[-6:]))
        footer = Text(f"status page {self.url}   flags {self.flags_file}   Ctrl-C to stop", "dim")
        return Group(
            table,
            script,
            Panel(alert_text, title="alerts", title_align="left"),
            Panel(
                recent_text or Text("none yet", "dim"), title="recent actions", title_align="left"
            ),
            footer,
        )

    # ------------------------------------------------------------------ shutdown

    async def _shutdown(self) -> None:
        if self.traffic is not None:
            await self.traffic.stop()
        task = self._daemon_task
        if task is not None and self.daemon is not None:
            self.daemon.request_stop("demo ending")
            grace = self.daemon.settings.lifecycle.grace_period_s + 5.0
            try:
                await asyncio.wait_for(asyncio.shield(task), grace)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            except Exception as err:
                if self.ready:
                    log.exception("daemon failed")
                else:
                    # Already said why it did not start; no traceback for a busy port.
                    log.debug("daemon failed at start: %r", err)
        if self.broker is not None:
            await self.broker.stop()

    def _say(self, line: str) -> None:
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)


def _describe_action(entry: dict[str, Any]) -> str:
    kind = entry.get("kind", "?")
    if kind == "transition":
        return f"{entry.get('model')}: {entry.get('from')} -> {entry.get('to')}"
    if "flag" in entry and "value" in entry:
        return f"flag {entry['flag']} = {json.dumps(entry['value'])}"
    details = " ".join(
        f"{k}={v}" for k, v in entry.items() if k not in ("kind", "at", "causes", "why")
    )
    return f"{kind} {details}"


def _describe_alert(alert: dict[str, Any]) -> str:
    parts = [str(alert.get(k)) for k in ("model", "alertname", "severity") if alert.get(k)]
    signals = alert.get("signals")
    if signals:
        parts.append("(" + ", ".join(map(str, signals)) + ")")
    return " ".join(parts) or json.dumps(alert, default=str)[:120]


def summary_lines(reports: list[IncidentReport]) -> list[str]:
    """The closing summary: one line per incident occurrence, then the totals."""
    lines = [report.line() for report in reports]
    detected = sum(r.detected for r in reports)
    recovered = sum(r.recovered for r in reports)
    flipped = sum(r.flipped for r in reports)
    restored = sum(r.restored for r in reports)
    lines.append(
        f"{len(reports)} incidents: {detected} detected, {recovered} recovered, "
        f"{flipped} flags flipped, {restored} restored"
    )
    return lines


async def run_demo(options: DemoOptions, *, console: Console | None = None) -> DemoResult:
    """Run the demo to its end (``duration``, Ctrl-C or a failure) and print the summary."""
    demo = Demo(options, console=console)
    result = await demo.run()
    for line in summary_lines(result.reports):
        demo.console.print(line, highlight=False, markup=False, soft_wrap=True)
    return result


def configure_demo_logging(console: Console, ui: bool) -> None:
    """Logs above the live view (rich) or as plain text lines on stderr."""
    root = logging.getLogger()
    if ui:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_path=False)
        root.setLevel(logging.WARNING)
        # Alerts from the console sink are WARNING: they show above the table.
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        root.setLevel(logging.INFO)
    root.handlers[:] = [handler]
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
