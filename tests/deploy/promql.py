"""Just enough PromQL reading to check the dashboard and rules against the metrics contract.

Not a parser: it finds metric names, the label matchers written right after them, and the
label lists of by/without/on/ignoring clauses -- the places a renamed metric or label hides.
"""

import re

METRIC_RE = re.compile(r"\b(edgefleet_[a-zA-Z0-9_]+)\b")
SELECTOR_RE = re.compile(r"\b(edgefleet_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")
GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")

# Grafana's template variables, replaced by values a plain Prometheus accepts.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "$device": ".*",
}


def metric_names(expr: str) -> set[str]:
    return set(METRIC_RE.findall(expr))


def selector_labels(expr: str) -> list[tuple[str, str]]:
    """(metric, label) for every label matcher inside metric{...}."""
    out = []
    for metric, body in SELECTOR_RE.findall(expr):
        out += [(metric, label) for label, _ in MATCHER_RE.findall(body)]
    return out


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for body in GROUPING_RE.findall(expr):
        labels |= {name.strip() for name in body.split(",") if name.strip()}
    return labels


def expand_grafana(expr: str) -> str:
    # Longest first: $__range must not eat the start of $__rate_interval.
    for var in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(var, GRAFANA_VARIABLES[var])
    return expr
