"""What a PromQL expression refers to (metric names, label names), and what a /metrics
exposition offers, so dashboards and alert rules can be checked against the daemon's metrics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "TARGET_LABELS",
    "Exposition",
    "References",
    "parse_exposition",
    "references",
    "substitute_grafana_variables",
]

#: Labels Prometheus adds at scrape time (ServiceMonitor targets); not in the exposition.
TARGET_LABELS = frozenset(
    {"namespace", "pod", "job", "instance", "service", "endpoint", "container"}
)

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "atan2", "inf", "nan"}
)
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<variable>\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)
    |(?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?[a-zA-Z]*)
    |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<punct>[{}()\[\],])
    |(?P<other>[^\sA-Za-z0-9_{}()\[\],"'`$]+)
    |(?P<space>\s+)
    """,
    re.VERBOSE,
)
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<expr>.*),\s*(?P<label>[A-Za-z_]\w*)\s*\)\s*$")


@dataclass(slots=True)
class References:
    """The metric names of an expression, the label names matched on each, and the labels
    named in grouping clauses (``by``, ``without``, ``on``, ``ignoring``, ``group_*``)."""

    metrics: dict[str, set[str]] = field(default_factory=dict)
    grouping: set[str] = field(default_factory=set)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot tokenize {expr[pos : pos + 20]!r} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            out.append((kind, match.group()))
        pos = match.end()
    return out


def references(expr: str) -> References:
    """Metric and label names an expression (or a Grafana ``label_values`` query) uses.

    >>> r = references('sum by (topic) (rate(x_total{job="a", topic=~"$t"}[5m])) / up')
    >>> sorted(r.metrics), sorted(r.metrics["x_total"]), sorted(r.grouping)
    (['up', 'x_total'], ['job', 'topic'], ['topic'])
    """
    refs = References()
    if (lv := _LABEL_VALUES.match(expr)) is not None:
        inner = references(lv.group("expr"))
        inner.grouping.add(lv.group("label"))
        return inner
    toks = _tokens(expr)
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "punct" and text == "[":
            while i < len(toks) and toks[i][1] != "]":
                i += 1
        elif kind == "ident" and text in _GROUPING and nxt == "(":
            i += 2
            while i < len(toks) and toks[i][1] != ")":
                if toks[i][0] == "ident":
                    refs.grouping.add(toks[i][1])
                i += 1
        elif kind == "ident" and text not in _KEYWORDS and nxt not in ("(", "by", "without"):
            labels = refs.metrics.setdefault(text, set())
            if nxt == "{":
                i += 2
                while i < len(toks) and toks[i][1] != "}":
                    if toks[i][0] == "ident":
                        labels.add(toks[i][1])
                    i += 1
        elif kind == "punct" and text == "{":
            raise ValueError(f"a selector without a metric name is not checkable: {expr!r}")
        i += 1
    return refs


@dataclass(slots=True)
class Exposition:
    """Sample names a /metrics page offers, each with the label names seen on its samples."""

    samples: dict[str, set[str]]

    def problems(self, expr: str, *, external: frozenset[str] = frozenset()) -> list[str]:
        """Why ``expr`` does not fit this exposition; empty when it does.

        ``external`` names metrics that come from elsewhere (kube-state-metrics, ``up``).
        """
        refs = references(expr)
        found: list[str] = []
        known_labels = set(TARGET_LABELS)
        for name, labels in refs.metrics.items():
            if name in external:
                known_labels |= labels
                continue
            if name not in self.samples:
                found.append(f"{name}: not exported")
                continue
            known_labels |= self.samples[name]
            unknown = labels - self.samples[name] - TARGET_LABELS
            if unknown:
                found.append(f"{name}: no label {sorted(unknown)}")
        unknown_grouping = refs.grouping - known_labels
        if unknown_grouping:
            found.append(f"grouping by labels no metric has: {sorted(unknown_grouping)}")
        return found


_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+\S+")
_LABEL_NAME = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="(?:[^"\\]|\\.)*"')


def parse_exposition(text: str) -> Exposition:
    """Sample names and their label names from Prometheus text exposition format."""
    samples: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"not an exposition sample line: {line!r}")
        names = samples.setdefault(match.group("name"), set())
        names.update(_LABEL_NAME.findall(match.group("labels") or ""))
    return Exposition(samples)


_GRAFANA_VARIABLES = {
    "$__rate_interval": "2m",
    "$__interval": "1m",
    "$__range": "6h",
}


def substitute_grafana_variables(expr: str) -> str:
    """The expression as Prometheus receives it, with example values for Grafana variables.

    >>> substitute_grafana_variables('rate(x{m=~"$model"}[$__rate_interval])')
    'rate(x{m=~".*"}[2m])'
    """
    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)
