"""The benchmark's one table: a row per (system, metric), driftd next to the baselines."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Result:
    """One method's score on one metric and the wall time it took (seconds, or None)."""

    value: float | str
    seconds: float | None = None


@dataclass
class Row:
    """``better`` says how to compare: "higher", "lower", "one" (closest to 1 in log
    terms) or None (no ratio). ``ok`` whether driftd meets ``target`` (None: no target)."""

    system: str
    metric: str
    target: str
    driftd: Result
    ok: bool | None = None
    better: str | None = None
    baselines: dict[str, Result] = field(default_factory=dict)


BASELINES = ("DriftDB-orig", "ruptures")


def _fmt(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "inf"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def _secs(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.1f}"


def ratio(row: Row, base: Result) -> str:
    """How many times better driftd is than ``base`` on this row (> 1: driftd better)."""
    d, b = row.driftd.value, base.value
    if row.better is None or isinstance(d, str) or isinstance(b, str):
        return ""
    if row.better == "higher":
        if b <= 0:  # no ratio against a score at or below chance
            return "-"
        num, den = d, b
    elif row.better == "lower":
        num, den = b, d
    else:  # "one": error |log x|
        num = abs(math.log(b)) if b > 0 else math.inf
        den = abs(math.log(d)) if d > 0 else math.inf
    if den <= 0 or math.isinf(den):
        return "inf" if num > 0 and den <= 0 else ""
    if math.isinf(num):
        return "inf"
    return f"{num / den:.1f}x" if num / den < 1000 else f"{num / den:.0f}x"


def render(rows: list[Row]) -> str:
    """The table as aligned text, with a legend."""
    header = ["system", "metric", "target", "driftd", "ok", "s"]
    for name in BASELINES:
        header += [name, "s", "x"]
    lines = [header]
    for r in rows:
        ok = "" if r.ok is None else ("yes" if r.ok else "MISS")
        line = [r.system, r.metric, r.target, _fmt(r.driftd.value), ok, _secs(r.driftd.seconds)]
        for name in BASELINES:
            base = r.baselines.get(name)
            if base is None:
                line += ["", "", ""]
            else:
                line += [_fmt(base.value), _secs(base.seconds), ratio(r, base)]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = []
    for k, line in enumerate(lines):
        text.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if k == 0:
            text.append("  ".join("-" * w for w in widths))
    text.append(
        "s: wall seconds of that method's step (one run, BLAS 1 thread); x: how many times "
        "better driftd is (ratio of scores, of errors for lower-is-better, of |log| for "
        "speed ratios; - where the baseline scores <= 0)."
    )
    return "\n".join(text)
