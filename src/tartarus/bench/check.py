"""Is a benchmark report well formed? (`tartarus bench --check FILE`; CI runs it.)

Checks the JSON's shape, that every summary agrees with its own samples' order statistics,
that ratios and pass/fail follow from the figures and targets, that a case without numbers
says why, and that the Markdown (and the plot, when there is something to plot) sit beside it.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from tartarus.bench.cases import BY_ID
from tartarus.bench.report import SCHEMA
from tartarus.bench.stats import Target

STATUSES = ("ok", "not_available", "error")
STATS = ("median", "p90", "p99", "min", "max", "mean", "value")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=2e-3, abs_tol=2e-3)


def _series(where: str, s: Any) -> list[str]:
    if not isinstance(s, dict):
        return [f"{where}: missing"]
    problems = [f"{where}.{k}: not a number" for k in STATS if not _num(s.get(k))]
    runs, samples = s.get("runs"), s.get("samples")
    if not isinstance(runs, int) or runs < 1:
        problems.append(f"{where}.runs: must be a positive integer")
    if not isinstance(samples, list) or not samples or not all(_num(x) for x in samples):
        return [*problems, f"{where}.samples: must be a non-empty list of numbers"]
    if isinstance(runs, int) and len(samples) != runs:
        problems.append(f"{where}: {len(samples)} samples for {runs} runs")
    if problems:
        return problems
    if not s["min"] <= s["median"] <= s["p90"] <= s["p99"] <= s["max"]:
        problems.append(f"{where}: min <= median <= p90 <= p99 <= max does not hold")
    if not (_close(min(samples), s["min"]) and _close(max(samples), s["max"])):
        problems.append(f"{where}: min/max disagree with the samples")
    if not isinstance(s.get("label"), str) or not s["label"]:
        problems.append(f"{where}.label: missing")
    return problems


def _case(c: Any, i: int) -> list[str]:
    if not isinstance(c, dict):
        return [f"cases[{i}]: not an object"]
    where = f"case {c.get('id', f'#{i}')}"
    problems: list[str] = []
    if not isinstance(c.get("id"), int) or c["id"] not in BY_ID:
        problems.append(f"{where}: id must be one of {sorted(BY_ID)}")
    for key in ("key", "title", "unit"):
        if not isinstance(c.get(key), str) or not c[key]:
            problems.append(f"{where}.{key}: missing")
    target = None
    if c.get("target") is not None:
        try:
            target = Target.from_dict(c["target"])
        except (ValueError, TypeError, AttributeError) as exc:
            problems.append(f"{where}.target: {exc}")
    status = c.get("status")
    if status not in STATUSES:
        return [*problems, f"{where}.status: must be one of {', '.join(STATUSES)}"]
    if status != "ok":
        if not isinstance(c.get("reason"), str) or not c["reason"]:
            problems.append(f"{where}: a {status} case must say why (reason)")
        if any(c.get(k) is not None for k in ("measured", "floor", "ratio", "pass")):
            problems.append(f"{where}: a {status} case must carry no figures")
        return problems
    problems += _series(f"{where}.measured", c.get("measured"))
    problems += _series(f"{where}.floor", c.get("floor"))
    if not isinstance(c.get("failures"), int) or c["failures"] < 0:
        problems.append(f"{where}.failures: must be a non-negative integer")
    if problems:
        return problems
    compare = c.get("compare", "median")
    if compare not in ("median", "p99", "value"):
        return [f"{where}.compare: unknown statistic {compare!r}"]
    figure, floor = c["measured"][compare], c["floor"]["value"]
    if not _num(c.get("ratio")) or floor <= 0 or not _close(c["ratio"], figure / floor):
        problems.append(f"{where}.ratio: does not equal {compare} / floor value")
    elif target is None:
        if c.get("pass") is not None:
            problems.append(f"{where}.pass: must be null without a target")
    else:
        checked = c["ratio"] if target.metric == "ratio" else figure
        expected = c["failures"] == 0 and target.met(checked)
        if c.get("pass") is not expected:
            problems.append(f"{where}.pass: should be {expected} for {checked} {target.text}")
    return problems


def check_report(path: Path) -> list[str]:
    """Every problem found in the report at `path` (empty: well formed)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [f"cannot read {path}: {exc}"]
    if not isinstance(report, dict):
        return ["the report is not a JSON object"]
    problems: list[str] = []
    if report.get("schema") != SCHEMA:
        problems.append(f"schema: expected {SCHEMA!r}")
    try:
        datetime.fromisoformat(str(report.get("date")))
    except ValueError:
        problems.append("date: not an ISO 8601 date")
    if not isinstance(report.get("quick"), bool):
        problems.append("quick: must be true or false")
    if not _num(report.get("duration_s")):
        problems.append("duration_s: not a number")
    m = report.get("machine")
    if not isinstance(m, dict) or not isinstance(m.get("cores"), int) or m["cores"] < 1:
        problems.append("machine.cores: must be a positive integer")
    elif not (
        isinstance(m.get("load_avg_start"), list)
        and len(m["load_avg_start"]) == 3
        and all(_num(x) for x in m["load_avg_start"])
    ):
        problems.append("machine.load_avg_start: must be three numbers")
    elif not isinstance(m.get("kernel"), str):
        problems.append("machine.kernel: missing")
    cases = report.get("cases")
    if not isinstance(cases, list) or not cases:
        return [*problems, "cases: must be a non-empty list"]
    for i, c in enumerate(cases):
        problems += _case(c, i)
    ids = [c.get("id") for c in cases if isinstance(c, dict)]
    if len(ids) != len(set(ids)):
        problems.append("cases: an id appears twice")
    problems += _beside(path, cases)
    return problems


def _beside(path: Path, cases: list[Any]) -> list[str]:
    problems: list[str] = []
    md = path.with_suffix(".md")
    try:
        text = md.read_text()
    except OSError:
        return [f"{md.name}: missing beside {path.name}"]
    png = path.with_suffix(".png")
    if any(isinstance(c, dict) and c.get("status") == "ok" for c in cases):
        try:
            ok = png.read_bytes()[:8] == PNG_MAGIC
        except OSError:
            ok = False
        if not ok:
            problems.append(f"{png.name}: missing or not a PNG")
        elif f"]({png.name})" not in text:
            problems.append(f"{md.name}: does not show {png.name}")
    for c in cases:
        if isinstance(c, dict) and f"### {c.get('id')}. " not in text:
            problems.append(f"{md.name}: no section for case {c.get('id')}")
    return problems
