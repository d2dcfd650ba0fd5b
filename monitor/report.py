"""The replay report: one self-contained HTML file (inline CSS and SVG, nothing fetched) with,
per model, its signals' statistics over event time, thresholds, state bands and actions.
"""

from __future__ import annotations

import html
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor.replay import ModelTrail, ReplayResult, SeriesRecorder

__all__ = ["format_time", "render_report", "write_report"]

log = logging.getLogger(__name__)

_WIDTH = 960
_PANEL_H = 150
_GAP = 46
_LEFT = 70
_RIGHT = 16
_TOP = 26
_BAND_COLOURS = {"warn": "#fff3b0", "degraded": "#ffd3a8", "critical": "#ffb3b3"}
_LINE_COLOURS = {"warn": "#c9a000", "degraded": "#e06c00", "critical": "#c00000"}

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #777; }
svg { background: #fff; border: 1px solid #eee; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
.legend span { display: inline-block; padding: 0 8px; margin-right: 6px; }
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
) -> str:
    signals = rec.signals if rec is not None else [s.signal_name for s in trail.policy.signals]
    n = max(1, len(signals))
    height = _TOP + n * (_PANEL_H + _GAP) + 10
    plot_w = _WIDTH - _LEFT - _RIGHT
    span = t1 - t0 if t1 > t0 else 1.0

    def x(t: float) -> float:
        return _LEFT + (t - t0) / span * plot_w

    parts = [
        f'<svg width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" role="img" '
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

    thresholds_by_signal = {
        s.signal_name: s.thresholds.items() if s.thresholds is not None else []
        for s in trail.policy.signals
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
        lo = min(finite, default=0.0)
        hi = max(finite, default=1.0)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        pad = (hi - lo) * 0.08
        lo, hi = lo - pad, hi + pad

        def y(v: float, lo: float = lo, hi: float = hi, bottom: float = bottom) -> float:
            return bottom - (v - lo) / (hi - lo) * _PANEL_H

        parts.append(f'<text x="{_LEFT}" y="{top - 8}">{_esc(name)}</text>')
        for start, end, state in bands:
            parts.append(
                f'<rect x="{x(start):.1f}" y="{top}" width="{max(1.0, x(end) - x(start)):.1f}" '
                f'height="{_PANEL_H}" fill="{_BAND_COLOURS.get(state, "#eee")}">'
                f"<title>{_esc(state)} {_esc(format_time(start))} - "
                f"{_esc(format_time(end))}</title>"
                "</rect>"
            )
        parts.append(
            f'<rect x="{_LEFT}" y="{top}" width="{plot_w}" height="{_PANEL_H}" '
            'fill="none" stroke="#bbb"/>'
        )
        for level, bound in fixed:
            colour = _LINE_COLOURS[level.label]
            parts.append(
                f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y(bound):.1f}" '
                f'y2="{y(bound):.1f}" stroke="{colour}" stroke-dasharray="6 4">'
                f"<title>{_esc(level.label)} threshold {_fmt_num(bound)}</title></line>"
            )
        if not fixed and limits:
            parts.extend(_polylines(times, limits, x, y, "#999", dashed=True, title="threshold"))
        parts.extend(_polylines(times, values, x, y, "#1f3f8f", dashed=False, title=name))
        parts.append(
            f'<text x="{_LEFT - 6}" y="{top + 10}" text-anchor="end">{_fmt_num(hi)}</text>'
        )
        parts.append(f'<text x="{_LEFT - 6}" y="{bottom}" text-anchor="end">{_fmt_num(lo)}</text>')
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
        for i in range(5):
            t = t0 + span * i / 4
            anchor = "start" if i == 0 else "end" if i == 4 else "middle"
            parts.append(
                f'<text x="{x(t):.1f}" y="{bottom + 18}" text-anchor="{anchor}">'
                f"{_esc(format_time(t)[11:23] if i else format_time(t))}</text>"
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


def render_report(result: ReplayResult, *, title: str = "driftwarden replay") -> str:
    """The report as one HTML string."""
    t0 = result.first_ts if result.first_ts is not None else 0.0
    t1 = result.last_ts if result.last_ts is not None else t0 + 1.0
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        _table(
            [
                "source",
                "lines",
                "events",
                "bad lines",
                "dropped (max_models)",
                "first event",
                "last event",
                "chunk",
            ],
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
        ),
        '<p class="legend">'
        + "".join(
            f'<span style="background:{c}">{_esc(s)}</span>' for s, c in _BAND_COLOURS.items()
        )
        + '<span style="color:#c00000">| alert fired</span>'
        '<span style="color:#2a8a2a">| alert resolved</span>'
        '<span style="color:#1f5fbf">&#9670; flag set/restored</span>'
        '<span style="color:#555">&#9644; known incident</span>'
        '<span class="muted">dashed: thresholds; hover for details</span></p>',
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
        incidents = [
            (i.start, i.end, i.label or ", ".join(i.signals or ()) or "any signal")
            for i in result.incidents
            if i.model == model
        ]
        out.append(_svg_model(trail, result.series.get(model), t0, t1, incidents))
        out.append(_trail_tables(trail))
    if result.bad:
        shown = result.bad[:200]
        out.append(
            f"<h2>Bad lines ({result.bad_lines})</h2>"
            + _table(
                ["line (0-based)", "reason", "detail"],
                [[str(b.line), _esc(b.reason), _esc(b.detail)] for b in shown],
                numeric={0},
            )
        )
        if result.bad_lines > len(shown):
            out.append(f'<p class="muted">{result.bad_lines - len(shown)} more not shown</p>')
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
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(
        render_report(result, title=title or f"driftwarden replay of {result.source}"),
        encoding="utf-8",
    )
    tmp.replace(target)
    log.debug("report written to %s", target)
