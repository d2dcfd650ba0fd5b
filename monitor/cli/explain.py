"""The ``explain`` subcommand: per model, what would be watched, with which detector, level,
``for`` and thresholds, and why, before anything runs. ``register`` adds it to the
``driftwarden`` parser.

It reads a file of events the way ``driftwarden replay`` does (``monitor.tools.replay``'s
``open_events`` and ``RecordedEventDecoder``: the daemon's decoder and limits), observes each
model's first ``auto.discover_events`` events as the engine does, and prints
``monitor.engine.discovery.coverage`` for each: the named models and those found in the
events. Nothing is applied to a detector: the output is the plan, not a replay.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from monitor.config.policy import ModelPolicy, SignalPolicy
from monitor.engine.discovery import MAX_TRACKED_FEATURES, CoveredSignal, ObservedSchema, coverage

if TYPE_CHECKING:
    # Imported when the command runs: building the parser (every command) should not pay
    # for the replay tool and the settings loader.
    from monitor.config.settings import Settings
    from monitor.tools.replay import BadLine

__all__ = [
    "EXPLAIN_VERSION",
    "MAX_EXPLAINED_MODELS",
    "EventsRead",
    "explain_command",
    "explanation",
    "print_explanation",
    "read_events",
    "register",
]

#: Version of the ``--json`` shape; bumped only on an incompatible change.
EXPLAIN_VERSION = 1
#: Models found in the events that are explained by default (``--max-models``); events of
#: further ones are counted. A policy's named models are always explained.
MAX_EXPLAINED_MODELS = 1000
#: Bad lines listed in the text output (all are counted; ``--json`` keeps ``MAX_BAD_KEPT``).
MAX_BAD_SHOWN = 20
#: Names listed per signal in the text output (``--json`` lists them all).
MAX_NAMES_SHOWN = 8
#: A name or value is cut to this many characters in the text output.
MAX_TEXT_CHARS = 60
#: Detector parameters the text output always shows when the detector has them: what it
#: tests (the others are shown when the policy sets them).
KEY_PARAMS = ("q", "threshold", "alert_on", "min_shift", "max_ratio", "window")

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_CONFIG = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``explain`` to the ``driftwarden`` subcommands."""
    explain = sub.add_parser(
        "explain",
        help="print, per model, what would be watched, with which detector and level",
        description=(
            "Before anything runs: per model (the policy's and those found in EVENTS), each "
            "signal it would watch, where it comes from (discovered, named, overridden), its "
            "source, features, detector, level, `for`, thresholds and why; the signals and "
            "features left out (auto.ignore, auto.max_features) and the models still "
            "discovering. EVENTS is what `driftwarden replay` reads (JSON lines, gzip or not, "
            "'-' for stdin); bad lines are counted and named. Without EVENTS, only what the "
            "policy names. Exit 0; 1 when EVENTS cannot be read; 2 on an invalid config."
        ),
    )
    explain.add_argument("events", metavar="EVENTS", nargs="?", help="JSON-lines file of events")
    explain.add_argument("--config", "-c", metavar="FILE", required=True, help="policy YAML")
    explain.add_argument("--json", action="store_true", help="print JSON (shape: docs/policies.md)")
    explain.add_argument(
        "--max-models",
        metavar="N",
        type=int,
        default=MAX_EXPLAINED_MODELS,
        help="models found in EVENTS explained at most (default %(default)s; the policy's "
        "named ones always)",
    )
    explain.set_defaults(func=explain_command)


# -- reading the events -----------------------------------------------------------------------


@dataclass(slots=True)
class ModelSeen:
    """One model's events in the file: how many, and the schema of its first ones."""

    events: int = 0
    #: What its first ``discover_events`` events carried; None when it does not discover.
    schema: ObservedSchema | None = None
    #: Its policy's ``auto.discover_events``: the events the engine builds its signals from.
    discover_events: int = 0


@dataclass(slots=True)
class EventsRead:
    """What ``read_events`` found in a file of events."""

    source: str
    lines: int = 0
    events: int = 0
    models: dict[str, ModelSeen] = field(default_factory=dict)
    bad_lines: int = 0
    bad: list[BadLine] = field(default_factory=list)
    #: Events of models past the explained bound, and why there is one.
    unexplained_events: int = 0
    bound: str = ""
    #: Why reading stopped before the end (a truncated gzip member, an I/O error).
    read_error: str | None = None


def read_events(
    settings: Settings,
    lines: Iterable[bytes],
    *,
    source: str = "<events>",
    max_models: int = MAX_EXPLAINED_MODELS,
) -> EventsRead:
    """Decode ``lines`` as replay and the daemon do and observe, per model that discovers, its
    first ``auto.discover_events`` events. Models not in the policy are kept up to
    ``max_models`` (and ``engine.max_models``); the events of further ones are counted.
    A read error ends the reading: what was read before it is kept, the error in
    ``read_error``.
    """
    from monitor.engine.events import BadRecord
    from monitor.tools.replay import MAX_BAD_KEPT, BadLine, RecordedEventDecoder

    decode = RecordedEventDecoder(max_bytes=settings.kafka.max_record_bytes).decode
    named = settings.named_models()
    limit = min(max_models, settings.engine.max_models)
    bound = (
        f"--max-models {max_models}"
        if max_models <= settings.engine.max_models
        else f"engine.max_models {settings.engine.max_models}"
    )
    read = EventsRead(source=source, bound=bound)
    models = read.models
    unnamed = 0
    index = -1
    try:
        for index, line in enumerate(lines):
            decoded = decode(line.rstrip(b"\r\n"))
            if isinstance(decoded, BadRecord):
                read.bad_lines += 1
                if len(read.bad) < MAX_BAD_KEPT:
                    read.bad.append(BadLine(index, decoded.reason.value, decoded.detail))
                continue
            read.events += 1
            model = decoded.model
            seen = models.get(model)
            if seen is None:
                if model not in named:
                    if unnamed >= limit:
                        read.unexplained_events += 1
                        continue
                    unnamed += 1
                policy = settings.policy_for(model)
                seen = models[model] = (
                    ModelSeen(schema=ObservedSchema(), discover_events=policy.auto.discover_events)
                    if policy.discovers
                    else ModelSeen()
                )
            seen.events += 1
            schema = seen.schema
            if schema is not None and schema.events < seen.discover_events:
                schema.observe((decoded,))
    except (OSError, EOFError) as err:
        read.read_error = str(err) or type(err).__name__
    read.lines = index + 1
    return read


# -- the explanation --------------------------------------------------------------------------


def _seconds(value: float) -> str:
    """A duration as a policy would write it.

    >>> [_seconds(v) for v in (30.0, 300.0, 90.0, 5400.0, 0.25, 172800.0)]
    ['30s', '5m', '90s', '90m', '250ms', '2d']
    """
    if value and value < 1:
        return f"{value * 1000:g}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value:g}s"


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float as a string: JSON has no inf."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _detector(signal: SignalPolicy) -> dict[str, Any]:
    spec = signal.detector_spec
    params = spec.model_dump(mode="json")
    chosen = sorted(
        name
        for name in (set(spec.model_fields_set) | set(KEY_PARAMS))
        if name in params and name != "type"
    )
    return {
        "type": spec.type,
        "key_params": {name: params[name] for name in chosen if params[name] is not None},
        "params": params,
    }


def _signal(covered: CoveredSignal, policy: ModelPolicy) -> dict[str, Any]:
    signal = covered.policy
    thresholds = signal.thresholds
    features = signal.features or ([signal.feature] if signal.feature else None)
    return {
        **covered.to_json(),
        "features": features,
        "expect": signal.expect,
        "detector": _detector(signal),
        "for_s": signal.for_ if signal.for_ is not None else policy.health.for_,
        "for_from": "signal" if signal.for_ is not None else "health.for",
        "thresholds": None if thresholds is None else thresholds.model_dump(exclude_none=True),
        # With thresholds the statistic's boundaries give the level; without, a verdict of
        # the detector raises ``level``.
        "level_from": "breach" if thresholds is None else "thresholds",
        "no_data": signal.no_data,
        "no_data_after_s": signal.no_data_after if signal.no_data is not None else None,
    }


def _watched_features(covered: Iterable[CoveredSignal]) -> list[str]:
    """Every feature a list of signals reads, in first-read order."""
    found: dict[str, None] = {}
    for c in covered:
        signal = c.policy
        names = [signal.feature] if signal.feature else []
        names += signal.features or []
        names += list(signal.expect or {})
        found.update(dict.fromkeys(names))
    return list(found)


def _left_out(policy: ModelPolicy, schema: ObservedSchema) -> dict[str, Any]:
    """What auto.ignore and auto.max_features leave unwatched, derived from ``coverage`` itself
    (the same policy without each bound), so this cannot drift from what discovery does."""
    auto = policy.auto
    feature_ignores = [i for i in auto.ignore if i.startswith("feature.")]
    name_ignores = [i for i in auto.ignore if not i.startswith("feature.")]

    def discovered(**auto_update: Any) -> list[CoveredSignal]:
        # Only discovery: named signals would take the place of discovered ones.
        probe = policy.model_copy(
            update={"signals": [], "auto": auto.model_copy(update={"enabled": True, **auto_update})}
        )
        return coverage(probe, schema)

    bounded = discovered(ignore=feature_ignores)
    unbounded = discovered(ignore=feature_ignores, max_features=MAX_TRACKED_FEATURES)
    kept = set(_watched_features(bounded))
    beyond = [name for name in _watched_features(unbounded) if name not in kept]
    ignored_signals = [
        {"name": c.name, "reason": c.reason} for c in bounded if c.name in set(name_ignores)
    ]
    ignored_features = [
        entry for entry in feature_ignores if entry.removeprefix("feature.") in schema.features
    ]
    matched = {s["name"] for s in ignored_signals} | set(ignored_features)
    return {
        "ignored_signals": ignored_signals,
        "ignored_features": [entry.removeprefix("feature.") for entry in ignored_features],
        # An entry that matches nothing is most often a misspelt name.
        "ignore_unmatched": [entry for entry in auto.ignore if entry not in matched],
        "max_features": auto.max_features,
        "beyond_max_features": beyond,
        "untracked_feature_values": schema.overflow,
    }


def _model(
    model: str, policy: ModelPolicy, in_policy: bool, seen: ModelSeen | None, events_given: bool
) -> dict[str, Any]:
    schema = seen.schema if seen is not None else None
    wanted = policy.auto.discover_events
    if not policy.discovers:
        discovery = "off"
    elif not events_given:
        discovery = "needs_events"
    elif schema is None or schema.events == 0:
        discovery = "no_events"
    elif schema.events < wanted:
        discovery = "discovering"
    else:
        discovery = "done"
    covered = coverage(policy, schema)
    entry: dict[str, Any] = {
        "model": model,
        "in_policy": in_policy,
        "mode": policy.mode,
        "events": seen.events if seen is not None else 0,
        "discovery": discovery,
        "discover_events": wanted if policy.discovers else None,
        "observed_events": schema.events if schema is not None else 0,
        "signals": [_signal(c, policy) for c in covered],
    }
    if policy.discovers and schema is not None and schema.events:
        entry.update(_left_out(policy, schema))
    return entry


def explanation(settings: Settings, read: EventsRead | None) -> dict[str, Any]:
    """The JSON document ``explain`` prints (``--json``) and renders as text."""
    named = sorted(settings.named_models())
    entries: list[dict[str, Any]] = []
    if read is None:
        for model in ["default", *named]:
            entries.append(_model(model, settings.policy_for(model), True, None, False))
    else:
        models = [*named, *(m for m in read.models if m not in settings.named_models())]
        if not models:
            models = ["default"]
        for model in models:
            in_policy = model in settings.named_models() or model == "default"
            entries.append(
                _model(model, settings.policy_for(model), in_policy, read.models.get(model), True)
            )
    doc: dict[str, Any] = {"version": EXPLAIN_VERSION, "models": entries}
    if read is not None:
        doc["events"] = {
            "source": read.source,
            "lines": read.lines,
            "events": read.events,
            "bad_lines": read.bad_lines,
            "bad": [{"line": b.line, "reason": b.reason, "detail": b.detail} for b in read.bad],
            "unexplained_events": read.unexplained_events,
            "bound": read.bound if read.unexplained_events else None,
            "read_error": read.read_error,
        }
    return _json_safe(doc)  # type: ignore[no-any-return]


# -- text -------------------------------------------------------------------------------------


def _clean(text: object, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` safe on a terminal: non-printable characters escaped, cut to ``limit``.

    >>> _clean("a\\x1b[31mb"), _clean("x" * 70, 10)
    ('a\\\\x1b[31mb', 'xxxxxxx...')
    """
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _names(names: list[str]) -> str:
    shown = ", ".join(_clean(n, 40) for n in names[:MAX_NAMES_SHOWN])
    more = len(names) - MAX_NAMES_SHOWN
    return shown + (f", ... ({more} more)" if more > 0 else "")


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else _clean(value, 30)


def _raises(level: str, raw: dict[str, Any] | None) -> str:
    if raw is None:
        return f"{level} on a breach"
    sign = "<" if raw.get("direction") == "below" else ">"
    return " ".join(
        f"{level}{sign}{_value(raw[level])}"
        for level in ("warn", "degraded", "critical")
        if level in raw
    )


def _status(entry: dict[str, Any], source: str | None) -> str:
    wanted = entry["discover_events"]
    return {
        "off": "named signals only (auto coverage off)",
        "needs_events": f"discovers its signals from its first {wanted} events: give EVENTS to "
        "see which; only the named ones below",
        "no_events": f"no events of it in {_clean(source, 500)}: discovers its signals from its "
        f"first {wanted}; only the named ones below",
        "discovering": f"still discovering: {entry['observed_events']} of the {wanted} events "
        "auto.discover_events asks for; what they show so far",
        "done": f"signals discovered from its first {wanted} events",
    }[entry["discovery"]]


def print_explanation(doc: dict[str, Any], out: TextIO) -> None:
    """The text form of ``explanation``: per model a table of its signals."""
    events = doc.get("events")
    source = events["source"] if events is not None else None
    if events is not None:
        out.write(
            f"explained {events['events']} events from {_clean(source, 500)} "
            f"({events['bad_lines']} bad lines)\n"
        )
    else:
        out.write("no EVENTS given: the policy's named signals only; discovery needs events\n")
    for entry in doc["models"]:
        where = "in the policy" if entry["in_policy"] else "found in the events (default policy)"
        counted = f", {entry['events']} events" if events is not None else ""
        out.write(f"\n{_clean(entry['model'], 200)} ({entry['mode']}, {where}{counted})\n")
        out.write(f"  {_status(entry, source)}\n")
        _print_signals(entry["signals"], out)
        _print_left_out(entry, out)
    if events is None:
        return
    if events["unexplained_events"]:
        out.write(
            f"\n{events['unexplained_events']} events of further models not explained: "
            f"{events['bound']} reached\n"
        )
    if events["bad_lines"]:
        out.write(f"\nbad lines ({events['bad_lines']}, 0-based as replay numbers them):\n")
        for bad in events["bad"][:MAX_BAD_SHOWN]:
            out.write(f"  line {bad['line']}: {bad['reason']}: {_clean(bad['detail'], 120)}\n")
        if events["bad_lines"] > MAX_BAD_SHOWN:
            out.write(f"  ... {events['bad_lines'] - MAX_BAD_SHOWN} more (see --json)\n")
    if events["read_error"]:
        out.write(f"\nreading stopped early: {_clean(events['read_error'], 200)}\n")


def _print_signals(signals: list[dict[str, Any]], out: TextIO) -> None:
    if not signals:
        out.write("  (no signal)\n")
        return
    header = ("SIGNAL", "ORIGIN", "SOURCE", "FOR", "DETECTOR", "RAISES")
    rows = []
    for s in signals:
        detector = s["detector"]
        params = " ".join(f"{k}={_value(v)}" for k, v in detector["key_params"].items())
        rows.append(
            (
                _clean(s["name"], 30),
                s["origin"],
                s["source"],
                _seconds(s["for_s"]) + ("" if s["for_from"] == "signal" else "*"),
                f"{detector['type']} {params}".strip(),
                _raises(s["level"], s["thresholds"]),
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]

    def line(cells: tuple[str, ...]) -> str:
        padded = [c.ljust(w) for c, w in zip(cells, widths, strict=False)]
        return "  " + "  ".join([*padded, cells[-1]]).rstrip() + "\n"

    out.write(line(header))
    for s, row in zip(signals, rows, strict=True):
        out.write(line(row))
        if s["features"]:
            each = " (one detector each)" if s["source"] == "features" else ""
            out.write(f"      features ({len(s['features'])}){each}: {_names(s['features'])}\n")
        if s["expect"]:
            expect = [f"{name}={kind}" for name, kind in s["expect"].items()]
            out.write(f"      expects ({len(expect)}): {_names(expect)}\n")
        out.write(f"      why: {_clean(s['reason'], 400)}\n")
    out.write("  (* the model's health.for)\n")


def _print_left_out(entry: dict[str, Any], out: TextIO) -> None:
    for signal in entry.get("ignored_signals", []):
        name, reason = _clean(signal["name"]), _clean(signal["reason"])
        out.write(f"  ignored (auto.ignore): {name}: {reason}\n")
    if entry.get("ignored_features"):
        names = entry["ignored_features"]
        out.write(f"  ignored features (auto.ignore, {len(names)}): {_names(names)}\n")
    for unmatched in entry.get("ignore_unmatched", []):
        out.write(f"  auto.ignore {_clean(unmatched)!r} matches no discovered signal or feature\n")
    if entry.get("beyond_max_features"):
        names = entry["beyond_max_features"]
        out.write(
            f"  left out by auto.max_features={entry['max_features']} ({len(names)}): "
            f"{_names(names)}\n"
        )
    if entry.get("untracked_feature_values"):
        out.write(
            f"  {entry['untracked_feature_values']} feature values under names past the "
            f"{MAX_TRACKED_FEATURES} tracked per model not counted\n"
        )


# -- the command ------------------------------------------------------------------------------


def _complain(message: str) -> None:
    print(f"driftwarden explain: {message}", file=sys.stderr)


def explain_command(args: argparse.Namespace) -> int:
    from monitor.config.settings import load_settings
    from monitor.errors import ConfigError
    from monitor.tools.replay import open_events

    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    if args.max_models < 0:
        _complain(f"--max-models must be at least 0, got {args.max_models}")
        return EXIT_CONFIG
    read: EventsRead | None = None
    if args.events is not None:
        try:
            raw = sys.stdin.buffer if args.events == "-" else Path(args.events).open("rb")  # noqa: SIM115
            with raw, open_events(raw) as stream:
                # A read error past this point ends the reading, not the command: what was
                # read before it is explained (``read_error``).
                read = read_events(
                    settings, iter(stream), source=args.events, max_models=args.max_models
                )
        except OSError as err:
            _complain(f"cannot read {args.events}: {err.strerror or err}")
            return EXIT_INPUT
    doc = explanation(settings, read)
    try:
        if args.json:
            sys.stdout.write(json.dumps(doc, indent=2, allow_nan=False) + "\n")
        else:
            print_explanation(doc, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # `| head`: the reader left; nothing more to say, and no error at exit either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    if read is not None and read.read_error is not None:
        _complain(f"{args.events}: reading stopped early: {read.read_error}")
        return EXIT_INPUT
    return EXIT_OK
