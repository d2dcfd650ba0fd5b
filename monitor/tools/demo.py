"""`driftwarden demo`: an embedded broker, scripted traffic of three models (one incident at a
time), the daemon with the flagd file backend and a console alert sink, a live terminal view
(models with each signal's value, threshold and state, the script's progress, an event log)
and a closing summary. The run's temporary directory is removed when it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
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

from monitor.config.policy import Level
from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.kafka.topics import ensure_topics
from monitor.observability.history import SignalHistory, attach_history, recovery
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker
from monitor.tools.traffic import (
    DEMO_SCRIPT,
    SCRIPT_PERIOD_S,
    Incident,
    TrafficGenerator,
    demo_script,
)

__all__ = [
    "Demo",
    "DemoOptions",
    "IncidentReport",
    "IncidentTracker",
    "demo_config",
    "human",
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
#: Lines kept in the live view's event log panel, and shown at once.
EVENT_LOG_KEEP = 200
EVENT_LOG_SHOWN = 10


def human(x: float | None) -> str:
    """A reading as a person reads it: no scientific notation for ordinary magnitudes.

    >>> [human(v) for v in (None, 0, 0.9174, 0.05, 0.0012, 3.14159, 42.42, 923.4, 12345.6)]
    ['…', '0', '0.917', '0.05', '0.0012', '3.14', '42.4', '923', '12,346']
    >>> human(-0.25), human(2.5e-7), human(float("nan")), human(3e12)
    ('-0.25', '0.00000025', '…', '3e+12')
    """
    if x is None or x != x:
        return "…"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1e9:
        return f"{x:.3g}"
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    # Three significant digits, in plain decimals.
    digits = 2 - math.floor(math.log10(a))
    return f"{x:.{digits}f}".rstrip("0").rstrip(".")


def shown_reading(signal: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """A /status signal's statistic, the boundary it is compared with and its effect size:
    the worst reading's, against the policy's threshold for the next level up (the
    detector's own when the policy maps none), as
    ``monitor.observability.history.signal_value`` does.

    >>> shown_reading({"level": "ok", "thresholds": {"degraded": 250, "critical": 900},
    ...     "readings": {"x": {"statistic": 80.0, "threshold": 1.0, "effect": 0.1}}})
    (80.0, 250, 0.1)
    >>> shown_reading({"level": "ok", "thresholds": None,
    ...     "readings": {"a": {"statistic": None}, "b": {"statistic": 0.3, "threshold": 0.12}}})
    (0.3, 0.12, None)
    """
    readings = [r for r in (signal.get("readings") or {}).values() if isinstance(r, dict)]
    known = [r for r in readings if isinstance(r.get("statistic"), (int, float))]
    reading = max(known, key=lambda r: r["statistic"]) if known else None
    value = reading["statistic"] if reading else None
    effect = reading.get("effect") if reading else None
    thresholds = signal.get("thresholds")
    if isinstance(thresholds, dict) and thresholds:
        current = Level.parse(str(signal.get("level", "ok")))
        ranked = sorted((Level.parse(k), v) for k, v in thresholds.items())
        above = [v for lvl, v in ranked if lvl > current]
        return value, (above[0] if above else ranked[-1][1]), effect
    return value, (reading.get("threshold") if reading else None), effect


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
    #: Keep the run's temporary directory (audit log, broker log, config) instead of removing it.
    keep_workdir: bool = False


def demo_policy_text() -> str:
    """The embedded demo policy (package data)."""
    return resources.files("monitor.tools").joinpath("demo_policy.yaml").read_text("utf-8")


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
    config["flags"] = {"type": "flagd_file", "path": str(flags_file)}
    sinks: list[dict[str, Any]] = [{"type": "console", "output": "log"}]
    if webhook_url is not None:
        sinks.append({"type": "webhook", "url": webhook_url})
    config["alerts"] = {"sinks": sinks, "self_runbook_url": SELF_RUNBOOK_URL}
    if audit_log is not None:
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

    >>> from monitor.tools.traffic import Incident
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
    #: The daemon's audit trail (JSON lines); the file is gone with the working directory
    #: unless ``keep_workdir``, its entries are in ``audit_entries``.
    audit_log: Path | None = None
    audit_entries: list[dict[str, Any]] = field(default_factory=list)
    #: The run's temporary directory (removed at the end unless ``keep_workdir``).
    workdir: Path | None = None


class Demo:
    """One demo run: broker, daemon, traffic and the view, shut down in reverse order."""

    def __init__(self, options: DemoOptions, *, console: Console | None = None) -> None:
        self.options = options
        self.console = console if console is not None else Console()
        # One incident at a time, spread over the run (see traffic.demo_script).
        self.script = demo_script(options.duration)
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
        self._last_models: dict[str, Any] = {}
        self._last_elapsed = 0.0
        self.audit_log: Path | None = None
        #: What happened, newest last: the live view's event log (plain lines without a UI).
        self.events: deque[tuple[float, str, str]] = deque(maxlen=EVENT_LOG_KEEP)

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
        final_flags: dict[str, Any] = {}
        audit_entries: list[dict[str, Any]] = []
        try:
            try:
                exit_code = await self._run(workdir)
            finally:
                try:
                    await self._shutdown()
                finally:
                    if opts.handle_signals:
                        for sig in HANDLED_SIGNALS:
                            loop.remove_signal_handler(sig)
            final_flags = read_flags(self.flags_file) if self.flags_file else {}
            audit_entries = _read_audit(self.audit_log)
        finally:
            # Also on Ctrl-C and on an error: a run leaves nothing behind in the temp dir.
            if opts.keep_workdir:
                self._say(f"driftwarden demo: kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
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
            final_flags,
            self.audit_log,
            audit_entries,
            workdir,
        )

    async def _run(self, workdir: Path) -> int:
        opts = self.options
        say = self._say
        kept = "kept at the end" if opts.keep_workdir else "removed at the end"
        say(f"driftwarden demo: working directory {workdir} ({kept})")
        self.broker = EmbeddedBroker(log_path=workdir / "tansu.log")
        await self.broker.start()
        say(f"embedded Kafka broker (Tansu) on {self.broker.bootstrap_servers}")

        self.flags_file = opts.flags_file or workdir / "flags.json"
        # Every flag of the policy, also those of incidents this run is too short for.
        seed_flags(self.flags_file, DEMO_SCRIPT)
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
        # The status page's sparklines: a point a second, the last three minutes.
        attach_history(daemon, SignalHistory(points=180, step_s=1.0))
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
        """Read the daemon's status and the flags file; feed the tracker and the event log;
        return the status, each model with ``recovering`` (None, or where to and time left).
        """
        assert self.daemon is not None and self.traffic is not None
        assert self.flags_file is not None
        daemon = self.daemon
        status = daemon.status()
        now = daemon.clock()
        for name, described in status["models"].items():
            monitor = daemon.engine.models.get(name)
            described["recovering"] = recovery(monitor, now) if monitor is not None else None
        states = {m: d["state"] for m, d in status["models"].items()}
        flags = read_flags(self.flags_file)
        elapsed = self.traffic.elapsed
        self.tracker.observe(elapsed, states, flags)
        self._note_changes(elapsed, status["models"], flags)
        self._last_flags, self._last_states = flags, states
        self._last_models = status["models"]
        return status

    def _note(self, elapsed: float, text: str, style: str = "") -> None:
        self.events.append((elapsed, text, style))
        if not self.options.ui:
            self._say(f"[{elapsed:5.1f}s] {text}")

    def _note_changes(self, elapsed: float, models: dict[str, Any], flags: dict[str, Any]) -> None:
        """Event-log lines for what changed since the last look: incidents starting and
        ending (the cause), states (the detection, with the readings that tell), flags."""
        was = self.traffic.active(self._last_elapsed) if self.traffic else []
        now_active = self.traffic.active(elapsed) if self.traffic else []
        for incident in self.script:
            if incident in now_active and incident not in was:
                self._note(elapsed, f"cause: {incident.name} starts", "bold")
            elif incident in was and incident not in now_active:
                self._note(elapsed, f"cause: {incident.name} ends", "bold")
        self._last_elapsed = elapsed
        for model, described in sorted(models.items()):
            before = self._last_states.get(model, "ok")
            state = described["state"]
            if state == before:
                continue
            readings = "; ".join(_reading_line(n, s) for n, s in described["signals"].items())
            if Level.parse(state) > Level.parse(before):
                self._note(elapsed, f"detected: {model} {before} -> {state}: {readings}",
                           STATE_STYLE.get(state, ""))  # fmt: skip
            else:
                self._note(elapsed, f"recovered: {model} {before} -> {state}: {readings}", "green")
        for flag, value in sorted(flags.items()):
            if flag in self._last_flags and self._last_flags[flag] != value:
                old = json.dumps(self._last_flags[flag])
                self._note(elapsed, f"flag: {flag} {old} -> {json.dumps(value)}", "magenta")

    async def _plain_view(self) -> None:
        last_line = 0.0
        while not self._finished():
            status = self.observe()
            elapsed = self.traffic.elapsed if self.traffic else 0.0
            if elapsed - last_line >= 5.0:
                last_line = elapsed
                active = ", ".join(i.name for i in self.traffic.active()) if self.traffic else ""
                self._say(
                    f"[{elapsed:5.1f}s] applied {status['applied_events']} events; "
                    f"incidents now: {active or 'none'}"
                )
            await self._tick(0.25)

    async def _live_view(self) -> None:
        with (
            self._logs_into_event_log(),
            Live(
                self.render(self.observe()),
                console=self.console,
                auto_refresh=False,
                transient=False,
            ) as live,
        ):
            while not self._finished():
                await self._tick(0.5)
                live.update(self.render(self.observe()), refresh=True)

    @contextlib.contextmanager
    def _logs_into_event_log(self) -> Iterator[None]:
        """While the live view runs, log records (the console sink's FIRING / RESOLVED lines
        among them) go to the event log panel instead of scrolling above the table."""
        root = logging.getLogger()
        saved = root.handlers[:]
        sink_log = logging.getLogger("alerts.console")
        saved_level = sink_log.level
        handler = _EventLogHandler(self)
        root.handlers[:] = [handler]
        sink_log.setLevel(logging.INFO)  # RESOLVED lines are INFO
        try:
            yield
        finally:
            root.handlers[:] = saved
            sink_log.setLevel(saved_level)

    # ------------------------------------------------------------------ the view

    def render(self, status: dict[str, Any]) -> Group:
        """The live view: the script's progress, one row per model (each signal's value,
        threshold and state; the model's state, recovering with the time left; its flags),
        then alerts and the event log."""
        table = Table(title="models", expand=True, title_justify="left")
        table.add_column("model", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("signal: value / threshold, state", overflow="fold", ratio=3)
        table.add_column("flags", overflow="fold", ratio=2)
        for model, described in sorted(status["models"].items()):
            state = described["state"]
            state_text = Text(state.upper(), style=STATE_STYLE.get(state, ""))
            recovering = described.get("recovering")
            if recovering and state != "ok":
                state_text.append(
                    f"\nrecovering -> {recovering['to']} in {recovering['left_s']:.0f}s",
                    style="green",
                )
            signals = Text()
            for index, (name, sig) in enumerate(described["signals"].items()):
                if index:
                    signals.append("\n")
                value, limit, _ = shown_reading(sig)
                level = str(sig.get("level", "ok"))
                signals.append(f"{name}: {human(value)} / {human(limit)} ")
                signals.append(level, style=STATE_STYLE.get(level, ""))
            flags = Text()
            for incident in DEMO_SCRIPT:
                if incident.model == model and incident.flag in self._last_flags:
                    value = self._last_flags[incident.flag]
                    changed = value != incident.healthy
                    if flags:
                        flags.append("\n")
                    flags.append(
                        f"{incident.flag}={json.dumps(value)}",
                        style="bold magenta" if changed else "dim",
                    )
            table.add_row(model, state_text, signals, flags)
        actions = status.get("actions") or {}
        alerts = actions.get("alerts") or []
        if alerts:
            alert_text = Text("\n".join(_describe_alert(a) for a in alerts[-6:]), style="red")
        else:
            alert_text = Text("no alert firing", style="green")
        log_text = Text()
        for index, (at, line, style) in enumerate(list(self.events)[-EVENT_LOG_SHOWN:]):
            if index:
                log_text.append("\n")
            log_text.append(f"{at:5.1f}s ", style="dim")
            log_text.append(line, style=style)
        if not log_text:
            recent = list(actions.get("recent") or [])[-EVENT_LOG_SHOWN:]
            log_text = Text("\n".join(_describe_action(e) for e in recent) or "none yet", "dim")
        footer = Text(f"status page {self.url}   flags {self.flags_file}   Ctrl-C to stop", "dim")
        return Group(
            self._script_view(),
            table,
            Panel(alert_text, title="alerts firing", title_align="left"),
            Panel(log_text, title="event log", title_align="left"),
            footer,
        )

    def _script_view(self) -> Table:
        """Each scripted incident of the current cycle: cause, detection, flag, recovery."""
        traffic = self.traffic
        elapsed = traffic.elapsed if traffic else 0.0
        title = f"script  t={elapsed:.0f}s"
        if self.options.duration is not None:
            title += f" of {self.options.duration:.0f}s"
        table = Table(title=title, expand=True, title_justify="left", box=None)
        for column in ("incident", "cause", "detected", "flag", "recovered", "flag restored"):
            table.add_column(column, no_wrap=True)
        cycle = int(elapsed // self.period_s) if self.period_s else 0
        offset = cycle * self.period_s if self.period_s else 0.0
        reports = {
            r.incident: r for r in self.tracker.reports if r.cycle == cycle
        }  # fmt: skip
        for incident in self.script:
            report = reports.get(incident)
            start = offset + incident.start_s
            if report is None:
                table.add_row(incident.name, Text(f"at {start:.0f}s", "dim"), "", "", "", "")
                continue
            active = traffic is not None and incident in traffic.active()
            cause = Text(
                f"{start:.0f}s-{offset + incident.end_s:.0f}s",
                style="bold red" if active else "",
            )
            table.add_row(
                incident.name,
                cause,
                _since(report.detected_at, report.started_at, STATE_STYLE.get(incident.level, "")),
                _since(report.flipped_at, report.started_at, "magenta"),
                _since(report.recovered_at, report.started_at, "green"),
                _since(report.restored_at, report.started_at, "green"),
            )
        return table

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


class _EventLogHandler(logging.Handler):
    """Log records as event log lines of a running demo's live view."""

    def __init__(self, demo: Demo) -> None:
        super().__init__(logging.INFO)
        self.demo = demo

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string must not break the view
            text = str(record.msg)
        if record.name == "alerts.console" and text.startswith("alert "):
            text = text.removeprefix("alert ")
            # The page names the runbook; the full URL would wrap the panel.
            text = re.sub(r" runbook=\S*/([^/\s]+)$", r" (runbook \1)", text)
            style = "red" if text.startswith("FIRING") else "green"
        else:
            style = "yellow" if record.levelno >= logging.WARNING else "dim"
            text = f"{record.levelname.lower()}: {text}"
        elapsed = self.demo.traffic.elapsed if self.demo.traffic else 0.0
        self.demo.events.append((elapsed, text, style))


def _since(t: float | None, base: float, style: str) -> Text:
    return Text("…", "dim") if t is None else Text(f"+{t - base:.1f}s", style)


def _reading_line(name: str, signal: dict[str, Any]) -> str:
    value, limit, _ = shown_reading(signal)
    return f"{name} {human(value)} / {human(limit)} {signal.get('level', 'ok')}"


def _read_audit(path: Path | None) -> list[dict[str, Any]]:
    """The audit log's entries (it is removed with the working directory)."""
    if path is None:
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


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
