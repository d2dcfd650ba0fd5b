"""The replay report: one self-contained HTML file (inline CSS and SVG, nothing fetched) with,
per model, the policy that ran, its signals' statistics over event time on round axes,
thresholds, state bands and actions; or two policies side by side with their scores
(``render_comparison``, ``replay --compare``). It fits a 1,000 px window.
"""

from __future__ import annotations

import html
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor.config.policy import ModelPolicy, SignalPolicy
from monitor.tools.replay import ModelTrail, ReplayResult, SeriesRecorder

__all__ = [
    "LEVEL_COLOURS",
    "comparison_rows",
    "format_time",
    "nice_ticks",
    "render_comparison",
    "render_report",
    "time_ticks",
    "write_comparison",
    "write_report",
]

log = logging.getLogger(__name__)

#: The drawing's own width; the SVG scales to its box (``width: 100%``).
_WIDTH = 940
_PANEL_H = 150
_GAP = 50
_LEFT = 64
_RIGHT = 16
_TOP = 26
#: One hue per level, far apart (yellow, orange, purple), each with its own dash, so the
#: levels read apart also in grey or for a colour-blind reader.
LEVEL_COLOURS = {"warn": "#c4ad00", "degraded": "#f04a00", "critical": "#8e1a6e"}
_BAND_COLOURS = {"warn": "#fff5b8", "degraded": "#ffd6c2", "critical": "#efcde6"}
_LINE_DASH = {"warn": "2 3", "degraded": "7 3", "critical": "12 3 2 3"}
_LINE_COLOURS = LEVEL_COLOURS
#: Seconds between time ticks, the first that leaves at most ``_MAX_TIME_TICKS`` on the axis.
_TIME_STEPS = (
    0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
    21600, 43200, 86400, 172800, 604800,
)  # fmt: skip
_MAX_TIME_TICKS = 7

_CSS = """
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 16px 20px; color: #222;
       max-width: 1200px; }
h1 { font-size: 22px; overflow-wrap: anywhere; }
h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccc; overflow-wrap: anywhere; }
h3 { font-size: 15px; margin: 14px 0 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; max-width: 100%; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
th { background: #f4f4f4; overflow-wrap: normal; }
td.num { text-align: right; font-variant-numeric: tabular-nums; overflow-wrap: normal; }
.muted { color: #777; }
svg { background: #fff; border: 1px solid #eee; display: block; width: 100%; height: auto; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
.legend span { display: inline-block; padding: 0 8px; margin: 0 6px 4px 0; }
.pair { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 16px; }
.pair > div { min-width: 0; }
.better { font-weight: 600; color: #1a7f37; }
.warning { border: 2px solid #b00020; background: #fdecee; color: #5c0011; padding: 8px 12px;
           margin: 12px 0; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def format_time(ts: float | None) -> str:
    if ts is None or not math.isfinite(ts):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _fmt_num(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    return f"{x:.4g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2, 2.5 or 5 times a power of ten apart) covering
    ``[lo, hi]``: the first at or below ``lo``, the last at or above ``hi``.

    >>> nice_ticks(0.013, 0.91)
    [0.0, 0.25, 0.5, 0.75, 1.0]
    >>> nice_ticks(37.2, 412.9)
    [0.0, 100.0, 200.0, 300.0, 400.0, 500.0]
    >>> nice_ticks(5.0, 5.0)
    [4.0, 4.5, 5.0, 5.5, 6.0]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi < lo:
        lo, hi = hi, lo
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - 1.0, hi + 1.0
    raw = (hi - lo) / max(1, count - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw * 0.999)
    first = math.floor(lo / step + 1e-9) * step
    ticks = []
    k = 0
    while True:
        value = first + k * step
        ticks.append(round(value, 12) + 0.0)
        if value >= hi - 1e-9 * step:
            break
        k += 1
    return ticks


def _tick_label(value: float, step: float) -> str:
    """A tick value with as many decimals as its step needs.

    >>> _tick_label(0.6000000001, 0.2), _tick_label(250.0, 50.0), _tick_label(0.025, 0.025)
    ('0.6', '250', '0.025')
    >>> _tick_label(12000.0, 2000.0), _tick_label(3e-5, 1e-5)
    ('12,000', '0.00003')
    """
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    if step > 0 and round(step, decimals) != step:
        decimals += 1
    text = f"{value:,.{decimals}f}"
    return "0" if text.strip("-0.,") == "" else text


def time_ticks(t0: float, t1: float) -> tuple[list[float], float]:
    """Round event times (multiples of 1, 2, 5, 10, 15, 30 s, 1, 2, 5, 10, 15, 30 min, 1 h ...
    of UTC) inside ``[t0, t1]``, and the step.

    >>> ticks, step = time_ticks(1718000059.995, 1718000179.3)
    >>> step, [format_time(t)[11:19] for t in ticks]
    (30, ['06:14:30', '06:15:00', '06:15:30', '06:16:00'])
    """
    span = max(t1 - t0, 1e-3)
    step: float = _TIME_STEPS[-1]
    for candidate in _TIME_STEPS:
        if span / candidate <= _MAX_TIME_TICKS:
            step = candidate
            break
    first = math.ceil(t0 / step - 1e-9) * step
    ticks = []
    k = 0
    while first + k * step <= t1 + 1e-9:
        ticks.append(round(first + k * step, 3))
        k += 1
    return ticks, step


def _time_label(ts: float, step: float) -> str:
    """``HH:MM`` for minute steps, ``HH:MM:SS`` for seconds, tenths below a second; the date
    once a step reaches a day.

    >>> _time_label(1718000100.0, 60), _time_label(1718000105.0, 5), _time_label(1718000105.5, 0.5)
    ('06:15', '06:15:05', '06:15:05.5')
    """
    when = datetime.fromtimestamp(ts, UTC)
    if step >= 86400:
        return when.strftime("%Y-%m-%d")
    if step >= 60:
        return when.strftime("%H:%M")
    if step >= 1:
        return when.strftime("%H:%M:%S")
    return when.strftime("%H:%M:%S.") + f"{when.microsecond // 100000}"


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _bands(trail: ModelTrail, t0: float, t1: float) -> list[tuple[float, float, str]]:
    """Intervals of non-ok state, from the transitions."""
    bands: list[tuple[float, float, str]] = []
    state, since = "ok", t0
    for t in trail.transitions:
        if state != "ok":
            bands.append((since, t["ts"], state))
        state, since = t["to"], t["ts"]
    if state != "ok":
        bands.append((since, t1, state))
    return bands


def _svg_model(
    trail: ModelTrail,
    rec: SeriesRecorder | None,
    t0: float,
    t1: float,
    incidents: list[tuple[float, float, str]],
    *,
    width: int = _WIDTH,
) -> str:
    signals = rec.signals if rec is not None else [s.signal_name for s in trail.signals]
    n = max(1, len(signals))
    height = _TOP + n * (_PANEL_H + _GAP) + 10
    plot_w = width - _LEFT - _RIGHT
    span = t1 - t0 if t1 > t0 else 1.0

    def x(t: float) -> float:
        return _LEFT + (t - t0) / span * plot_w

    parts = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" preserveAspectRatio="xMinYMin meet" role="img" '
        f'aria-label="{_esc(trail.model)} signals over event time">'
    ]
    bands = _bands(trail, t0, t1)
    markers: list[tuple[float, str, str]] = []
    for a in trail.alerts:
        colour = "#2a8a2a" if a["action"] == "resolve" else "#c00000"
        label = f"alert {a['action']} {a['severity']} at line {a['index']} ({format_time(a['ts'])})"
        markers.append((a["ts"], colour, label))
    flag_marks: list[tuple[float, str]] = []
    for f in trail.flags:
        label = (
            f"flag {f['flag']} {f['action']}"
            + (f" = {f['value']!r}" if f["action"] == "set" else "")
            + f" at line {f['index']} ({format_time(f['ts'])})"
        )
        flag_marks.append((f["ts"], label))
    ticks_t, step_t = time_ticks(t0, t1)

    thresholds_by_signal = {
        s.signal_name: s.thresholds.items() if s.thresholds is not None else []
        for s in trail.signals
    }
    for k, name in enumerate(signals):
        top = _TOP + k * (_PANEL_H + _GAP)
        bottom = top + _PANEL_H
        values = rec.values[k] if rec is not None else []
        limits = rec.thresholds[k] if rec is not None else []
        times = rec.times if rec is not None else []
        fixed = thresholds_by_signal.get(name, [])
        finite = [v for v in values if math.isfinite(v)]
        finite += [v for _, v in fixed]
        if not fixed:
            finite += [v for v in limits if math.isfinite(v)]
        ticks_y = nice_ticks(min(finite, default=0.0), max(finite, default=1.0))
        lo, hi = ticks_y[0], ticks_y[-1]
        step_y = ticks_y[1] - ticks_y[0] if len(ticks_y) > 1 else 1.0

        def y(v: float, lo: float = lo, hi: float = hi, bottom: float = bottom) -> float:
            return bottom - (v - lo) / (hi - lo) * _PANEL_H

        parts.append(f'<text x="{_LEFT}" y="{top - 8}" font-weight="600">{_esc(name)}</text>')
        for start, end, state in bands:
            parts.append(
                f'<rect x="{x(start):.1f}" y="{top}" width="{max(1.0, x(end) - x(start)):.1f}" '
                f'height="{_PANEL_H}" fill="{_BAND_COLOURS.get(state, "#eee")}">'
                f"<title>{_esc(state)} {_esc(format_time(start))} - "
                f"{_esc(format_time(end))}</title>"
                "</rect>"
            )
        # Grid and axes: round values and round times.
        for value in ticks_y:
            parts.append(
                f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y(value):.1f}" '
                f'y2="{y(value):.1f}" stroke="#eaeaea"/>'
                f'<text x="{_LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" class="tick">'
                f"{_esc(_tick_label(value, step_y))}</text>"
            )
        for when in ticks_t:
            parts.append(
                f'<line x1="{x(when):.1f}" x2="{x(when):.1f}" y1="{top}" y2="{bottom}" '
                f'stroke="#f0f0f0"/>'
                f'<text x="{x(when):.1f}" y="{bottom + 16}" text-anchor="middle" class="tick">'
                f"{_esc(_time_label(when, step_t))}</text>"
            )
        parts.append(
            f'<rect x="{_LEFT}" y="{top}" width="{plot_w}" height="{_PANEL_H}" '
            'fill="none" stroke="#bbb"/>'
        )
        for level, bound in fixed:
            colour = LEVEL_COLOURS[level.label]
            parts.append(
                f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y(bound):.1f}" '
                f'y2="{y(bound):.1f}" stroke="{colour}" stroke-width="1.6" '
                f'stroke-dasharray="{_LINE_DASH[level.label]}">'
                f"<title>{_esc(level.label)} threshold {_fmt_num(bound)}</title></line>"
                f'<text x="{_LEFT + plot_w - 4}" y="{y(bound) - 3:.1f}" text-anchor="end" '
                f'fill="{colour}" style="fill:{colour}">{_esc(level.label)} '
                f"{_esc(_fmt_num(bound))}</text>"
            )
        if not fixed and limits:
            parts.extend(_polylines(times, limits, x, y, "#999", dashed=True, title="threshold"))
        parts.extend(_polylines(times, values, x, y, "#1f3f8f", dashed=False, title=name))
        for when, colour, label in markers:
            parts.append(
                f'<line x1="{x(when):.1f}" x2="{x(when):.1f}" y1="{top}" y2="{bottom}" '
                f'stroke="{colour}" stroke-width="1.5"><title>{_esc(label)}</title></line>'
            )
        for when, label in flag_marks:
            cx = x(when)
            parts.append(
                f'<path d="M{cx:.1f},{top - 6} l5,5 l-5,5 l-5,-5 z" fill="#1f5fbf">'
                f"<title>{_esc(label)}</title></path>"
            )
        for start, end, label in incidents:
            parts.append(
                f'<rect x="{x(start):.1f}" y="{bottom + 2}" '
                f'width="{max(2.0, x(min(end, t1)) - x(start)):.1f}" height="4" fill="#555">'
                f"<title>known incident {_esc(label)}: {_esc(format_time(start))} - "
                f"{_esc(format_time(end))}</title></rect>"
            )
    day = datetime.fromtimestamp(t0, UTC).strftime("%Y-%m-%d")
    parts.append(
        f'<text x="{_LEFT + plot_w}" y="{height - 4}" text-anchor="end" class="muted">'
        f"event time (UTC), {day}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _polylines(
    times: list[float],
    values: list[float],
    x: Any,
    y: Any,
    colour: str,
    *,
    dashed: bool,
    title: str,
) -> list[str]:
    """One polyline per run of finite values (an inconclusive reading leaves a gap)."""
    out: list[str] = []
    run: list[str] = []
    dash = ' stroke-dasharray="3 3"' if dashed else ""

    def close() -> None:
        if len(run) == 1:
            px, py = run[0].split(",")
            out.append(f'<circle cx="{px}" cy="{py}" r="1.5" fill="{colour}"/>')
        elif run:
            out.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.3"{dash} '
                f'points="{" ".join(run)}"><title>{_esc(title)}</title></polyline>'
            )
        run.clear()

    for t, v in zip(times, values, strict=True):
        if math.isfinite(v):
            run.append(f"{x(t):.1f},{y(v):.1f}")
        else:
            close()
    close()
    return out


def _score_section(score: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    for model, entry in score["models"].items():
        scopes = [("(model)", entry), *entry["signals"].items()]
        for scope, row in scopes:
            for name in ("policy", "never_fire", "always_fire"):
                s = row[name]
                delay = s["delay_s"]
                rows.append(
                    [
                        _esc(model),
                        _esc(scope),
                        _esc(name.replace("_", "-")),
                        str(row["incidents"]),
                        str(s["false_alarms"]),
                        str(s["misses"]),
                        "-" if delay["mean"] is None else f"{delay['mean']:.3g}",
                        "-" if delay["max"] is None else f"{delay['max']:.3g}",
                    ]
                )
    table = _table(
        [
            "model",
            "signal",
            "detector",
            "incidents",
            "false alarms",
            "misses",
            "mean delay s",
            "max delay s",
        ],
        rows,
        numeric={3, 4, 5, 6, 7},
    )
    return (
        f"<h2>Score against known incidents</h2><p>{score['incidents']} incidents, grace "
        f"{score['grace_s']:g} s. A detection is the first alarm inside [start, end + grace].</p>"
        + table
    )


def _legend() -> str:
    bands = "".join(
        f'<span style="background:{c}">{_esc(s)} state</span>' for s, c in _BAND_COLOURS.items()
    )
    lines = "".join(
        f'<span style="color:{c};border-bottom:2px {"dotted" if s == "warn" else "dashed"} {c}">'
        f"{_esc(s)} threshold</span>"
        for s, c in LEVEL_COLOURS.items()
    )
    return (
        f'<p class="legend">{bands}{lines}'
        '<span style="color:#1f3f8f">&#9473; statistic</span>'
        '<span style="color:#c00000">| alert fired</span>'
        '<span style="color:#2a8a2a">| alert resolved</span>'
        '<span style="color:#1f5fbf">&#9670; flag set/restored</span>'
        '<span style="color:#555">&#9644; known incident</span>'
        '<span class="muted">hover for details</span></p>'
    )


def _seconds(value: float) -> str:
    """A duration as a policy says it.

    >>> _seconds(5.0), _seconds(90.0), _seconds(7200.0), _seconds(0.5)
    ('5s', '1m30s', '2h', '0.5s')
    """
    if value >= 3600 and value % 3600 == 0:
        return f"{value / 3600:g}h"
    if value >= 60:
        minutes, rest = divmod(value, 60)
        return f"{minutes:.0f}m" + (f"{rest:g}s" if rest else "")
    return f"{value:g}s"


_DETECTOR_PARAMS = ("q", "threshold", "window", "min_samples", "min_shift", "alert_on", "persist")


def _policy_section(policy: ModelPolicy, signals: list[SignalPolicy] | None = None) -> str:
    """The policy that ran: health timing, signals (``signals``: those watched, discovered
    ones too) and what each level does."""
    health = policy.health
    timing = (
        f"<p><b>mode</b> {_esc(policy.mode)} · <b>for</b> {_seconds(health.for_)} · "
        f"<b>recover_after</b> {_seconds(health.recover_after)} · "
        f"<b>cooldown</b> {_seconds(health.cooldown)}</p>"
    )
    rows = []
    for s in policy.signals if signals is None else signals:
        spec = s.detector_spec
        params = ", ".join(
            f"{k}={getattr(spec, k)}"
            for k in _DETECTOR_PARAMS
            if getattr(spec, k, None) is not None
        )
        if s.thresholds is not None:
            marks = ", ".join(f"{lvl.label} {_fmt_num(v)}" for lvl, v in s.thresholds.items())
            bounds = f"{marks} ({s.thresholds.direction})"
        else:
            bounds = f"detector verdict -> {s.level}"
        rows.append(
            [
                _esc(s.signal_name),
                _esc(s.source.value + (f" {s.feature}" if s.feature else "")),
                _esc(f"{spec.type} ({params})" if params else spec.type),
                _esc(bounds),
                _esc(_seconds(s.for_) if s.for_ is not None else "-"),
            ]
        )
    table = _table(["signal", "source", "detector", "thresholds", "own for"], rows)
    acts = []
    for level, actions in policy.actions.items():
        what = []
        if actions.flags:
            what.append("flags " + ", ".join(f"{k}={v!r}" for k, v in actions.flags.items()))
        if actions.alert is not None:
            what.append(f"alert {actions.alert.severity}")
        if actions.review is not None:
            what.append(f"review {actions.review.sample_rate:g} of events")
        acts.append([_esc(level), _esc("; ".join(what) or "nothing")])
    return "<h3>Policy</h3>" + timing + table + _table(["on entering", "does"], acts)


def _coverage_section(trail: ModelTrail) -> str:
    """What was watched and why: each signal's origin (discovered, named, overridden) and
    reason, and what discovery saw but left unwatched."""
    coverage = trail.coverage
    if coverage is None or not coverage.get("discovers"):
        return ""
    if coverage["state"] == "discovering":
        state = (
            f"still discovering: {coverage['events_observed']} of "
            f"{coverage['discover_events']} events observed (no signal discovered yet)"
        )
    else:
        state = f"signals discovered from the first {coverage['events_observed']} events"
    rows = [
        [
            _esc(c["name"]),
            _esc(c["origin"]),
            _esc(c["detector"]),
            _esc(c["level"]),
            _esc(c["reason"]),
        ]
        for c in coverage["signals"]
    ]
    unwatched = []
    for key, label in (
        ("ignored_features", "ignored features (auto.ignore)"),
        ("ignored_signals", "ignored signals (auto.ignore)"),
        ("left_out", f"beyond auto.max_features={coverage.get('max_features')}"),
        ("rare", "in too few events"),
    ):
        names = coverage.get(key) or []
        if names:
            total = coverage.get(f"{key}_count", len(names))
            more = f" and {total - len(names)} more" if total > len(names) else ""
            unwatched.append([_esc(label), _esc(", ".join(names) + more)])
    if coverage.get("overflow"):
        unwatched.append(
            [_esc("feature values under untracked names"), _esc(str(coverage["overflow"]))]
        )
    if coverage.get("schema_unwatched"):
        unwatched.append([_esc("schema not watched"), _esc(coverage["schema_unwatched"])])
    out = f"<h3>What was watched and why</h3><p>{_esc(state)}</p>" + _table(
        ["signal", "origin", "detector", "level", "why"], rows
    )
    if unwatched:
        out += "<p>Seen but not watched:</p>" + _table(["what", "names"], unwatched)
    return out


def _header(result: ReplayResult) -> str:
    return _table(
        ["source", "lines", "events", "bad lines", "dropped (max_models)", "first event",
         "last event", "chunk"],
        [
            [
                _esc(result.source),
                str(result.lines),
                str(result.events),
                str(result.bad_lines),
                str(result.dropped_events),
                _esc(format_time(result.first_ts)),
                _esc(format_time(result.last_ts)),
                str(result.chunk_size),
            ]
        ],
        numeric={1, 2, 3, 4, 7},
    )  # fmt: skip


def _warnings(result: ReplayResult, label: str = "") -> str:
    """The replay's warnings (a stuck event clock), first on the page: they say the tables
    below cannot show what the daemon would have done."""
    return "".join(
        f'<div class="warning" role="alert"><b>Warning{_esc(label)}:</b> {_esc(w["message"])}</div>'
        for w in result.warnings
    )


def _span(*results: ReplayResult) -> tuple[float, float]:
    firsts = [r.first_ts for r in results if r.first_ts is not None]
    lasts = [r.last_ts for r in results if r.last_ts is not None]
    t0 = min(firsts) if firsts else 0.0
    t1 = max(lasts) if lasts else t0 + 1.0
    return t0, t1


def _incidents_of(result: ReplayResult, model: str) -> list[tuple[float, float, str]]:
    return [
        (i.start, i.end, i.label or ", ".join(i.signals or ()) or "any signal")
        for i in result.incidents
        if i.model == model
    ]


def render_report(result: ReplayResult, *, title: str = "driftwarden replay") -> str:
    """The report as one HTML string."""
    t0, t1 = _span(result)
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        _warnings(result),
        _header(result),
        _legend(),
    ]
    if result.score is not None:
        out.append(_score_section(result.score))
    for model in sorted(result.trails):
        trail = result.trails[model]
        out.append(
            f'<h2 id="model-{_esc(model)}">{_esc(model)} '
            f'<span class="muted">({_esc(trail.policy.mode)}, '
            f"{result.model_events.get(model, 0)} events, final state "
            f"{_esc(result.final_state.get(model, 'ok'))})</span></h2>"
        )
        out.append(_policy_section(trail.policy, trail.signals))
        out.append(_coverage_section(trail))
        out.append(
            _svg_model(trail, result.series.get(model), t0, t1, _incidents_of(result, model))
        )
        out.append(_trail_tables(trail))
    out.append(_bad_lines(result))
    out.append("</body></html>\n")
    return "".join(out)


def _bad_lines(result: ReplayResult) -> str:
    if not result.bad:
        return ""
    shown = result.bad[:200]
    out = f"<h2>Bad lines ({result.bad_lines})</h2>" + _table(
        ["line (0-based)", "reason", "detail"],
        [[str(b.line), _esc(b.reason), _esc(b.detail)] for b in shown],
        numeric={0},
    )
    if result.bad_lines > len(shown):
        out += f'<p class="muted">{result.bad_lines - len(shown)} more not shown</p>'
    return out


def unhealthy_seconds(trail: ModelTrail, t1: float) -> float:
    """Event-time seconds the model spent above ok."""
    return sum(end - start for start, end, _ in _bands(trail, t1, t1))


def _scores(result: ReplayResult, model: str, t1: float) -> dict[str, str]:
    """What one policy did to one model, as the comparison shows it."""
    trail = result.trails.get(model)
    if trail is None:
        return {}
    fired = sum(a["action"] == "fire" for a in trail.alerts)
    flips = sum(f["action"] == "set" for f in trail.flags)
    worst = "ok"
    for transition in trail.transitions:
        if _LEVEL_ORDER.index(transition["to"]) > _LEVEL_ORDER.index(worst):
            worst = transition["to"]
    scores = {
        "transitions": str(len(trail.transitions)),
        "alerts fired (pages)": str(fired),
        "flags set": str(flips),
        "time not ok": _seconds(round(unhealthy_seconds(trail, t1), 1)),
        "worst state": worst,
    }
    entry = (result.score or {}).get("models", {}).get(model)
    if entry is not None:
        policy = entry["policy"]
        mean = policy["delay_s"]["mean"]
        scores["incidents (truth)"] = str(entry["incidents"])
        scores["false alarms"] = str(policy["false_alarms"])
        scores["misses"] = str(policy["misses"])
        scores["mean detection delay"] = "-" if mean is None else f"{mean:.3g}s"
    return scores


_LEVEL_ORDER = ["ok", "warn", "degraded", "critical"]
#: Scores where fewer is better; the comparison marks the better side.
_FEWER_IS_BETTER = ("false alarms", "misses", "mean detection delay", "alerts fired (pages)")


def _number(text: str) -> float | None:
    try:
        return float(text.rstrip("s"))
    except ValueError:
        return None


def comparison_rows(first: ReplayResult, second: ReplayResult) -> list[tuple[str, str, str, str]]:
    """(model, score, under A, under B) for every model either replay saw."""
    _, t1 = _span(first, second)
    rows = []
    for model in sorted(set(first.trails) | set(second.trails)):
        a, b = _scores(first, model, t1), _scores(second, model, t1)
        for name in dict.fromkeys([*a, *b]):
            rows.append((model, name, a.get(name, "-"), b.get(name, "-")))
    return rows


def render_comparison(
    first: ReplayResult,
    second: ReplayResult,
    *,
    labels: tuple[str, str],
    title: str = "driftwarden replay: two policies compared",
) -> str:
    """Two policies replayed over the same events, side by side: per model, each policy, its
    scores (the better one marked), its plot and its transitions."""
    t0, t1 = _span(first, second)
    half = (_WIDTH - 16) // 2
    a_label, b_label = labels
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f"<p><b>A</b> {_esc(a_label)} · <b>B</b> {_esc(b_label)}</p>",
        _warnings(first, " (A)"),
        _warnings(second, " (B)"),
        _header(first),
        _legend(),
    ]
    models = sorted(set(first.trails) | set(second.trails))
    rows = []
    for model, name, a, b in comparison_rows(first, second):
        left, right = _esc(a), _esc(b)
        na, nb = _number(a), _number(b)
        if name in _FEWER_IS_BETTER and na is not None and nb is not None and na != nb:
            if na < nb:
                left = f'<span class="better">{left}</span>'
            else:
                right = f'<span class="better">{right}</span>'
        rows.append([_esc(model), _esc(name), left, right])
    out.append("<h2>Scores</h2>")
    out.append(_table(["model", "score", "A", "B"], rows, numeric={2, 3}))
    for model in models:
        out.append(f'<h2 id="model-{_esc(model)}">{_esc(model)}</h2><div class="pair">')
        for letter, label, result in (("A", a_label, first), ("B", b_label, second)):
            out.append(f'<div data-policy="{letter}"><h3>{letter}: {_esc(label)}</h3>')
            trail = result.trails.get(model)
            if trail is None:
                out.append('<p class="muted">No event of this model under this policy.</p>')
            else:
                out.append(_policy_section(trail.policy, trail.signals))
                out.append(_coverage_section(trail))
                out.append(
                    _svg_model(
                        trail, result.series.get(model), t0, t1,
                        _incidents_of(result, model), width=half,
                    )
                )  # fmt: skip
                out.append(_trail_tables(trail))
            out.append("</div>")
        out.append("</div>")
    out.append(_bad_lines(first))
    out.append("</body></html>\n")
    return "".join(out)


def _trail_tables(trail: ModelTrail) -> str:
    if not trail.transitions:
        return '<p class="muted">No transition: the policy would have done nothing.</p>'
    parts = [
        "<h3>Transitions</h3>",
        _table(
            ["line", "event time", "from", "to", "signals"],
            [
                [
                    str(t["index"]),
                    _esc(format_time(t["ts"])),
                    _esc(t["from"]),
                    _esc(t["to"]),
                    _esc(", ".join(t["signals"]) or "every signal healthy"),
                ]
                for t in trail.transitions
            ],
            numeric={0},
        ),
    ]
    if trail.flags:
        parts.append("<h3>Flags that would flip</h3>")
        parts.append(
            _table(
                ["line", "event time", "flag", "action", "value"],
                [
                    [
                        str(f["index"]),
                        _esc(format_time(f["ts"])),
                        _esc(f["flag"]),
                        _esc(f["action"]),
                        _esc("(prior value)" if f["value"] is None else repr(f["value"])),
                    ]
                    for f in trail.flags
                ],
                numeric={0},
            )
        )
    if trail.alerts:
        parts.append("<h3>Alerts that would fire</h3>")
        parts.append(
            _table(
                ["line", "event time", "action", "severity", "state", "signals"],
                [
                    [
                        str(a["index"]),
                        _esc(format_time(a["ts"])),
                        _esc(a["action"]),
                        _esc(a["severity"]),
                        _esc(a["state"]),
                        _esc(", ".join(a["signals"])),
                    ]
                    for a in trail.alerts
                ],
                numeric={0},
            )
        )
    return "".join(parts)


def write_report(result: ReplayResult, path: str | Path, *, title: str | None = None) -> None:
    """Write the report atomically enough for a CLI: to a sibling temp file, then rename."""
    _write(path, render_report(result, title=title or f"driftwarden replay of {result.source}"))


def write_comparison(
    first: ReplayResult, second: ReplayResult, path: str | Path, *, labels: tuple[str, str]
) -> None:
    """Write the side-by-side report of two policies (see ``render_comparison``)."""
    title = f"driftwarden replay of {first.source}: two policies compared"
    _write(path, render_comparison(first, second, labels=labels, title=title))


def _write(path: str | Path, text: str) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    log.debug("report written to %s", target)
