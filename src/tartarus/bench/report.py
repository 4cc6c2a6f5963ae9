"""The benchmark's outputs: `<name>.json` for machines, `<name>.md` (+ `<name>.png`) for people.

The JSON is the record (every sample, the summaries, the floors, the ratio, the target and
pass/fail per case, and the machine it ran on); the Markdown is rendered from it alone, so
the two cannot disagree. `check.py` validates what is written here.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from tartarus.bench.results import CaseResult

SCHEMA = "tartarus-bench/1"


def machine_info() -> dict[str, Any]:
    """Where the figures come from; the load average is read at the start of the run."""
    load = os.getloadavg()
    return {
        "cores": os.cpu_count() or 0,
        "load_avg_start": [round(x, 2) for x in load],
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "crun": _version("crun"),
        "hostname": platform.node(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError):
        pass
    return None


def _version(binary: str) -> str | None:
    if shutil.which(binary) is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else None


def build(
    results: list[CaseResult],
    *,
    machine: dict[str, Any],
    started: datetime,
    duration_s: float,
    quick: bool,
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "date": started.isoformat(timespec="seconds"),
        "quick": quick,
        "duration_s": round(duration_s, 1),
        "machine": machine,
        "cases": [r.to_dict() for r in sorted(results, key=lambda r: r.id)],
    }


def write(report: dict[str, Any], out_dir: Path, name: str = "latest") -> Path:
    """Write `<name>.json`, the plot `<name>.png` and `<name>.md`; returns the JSON's path."""
    from tartarus.bench import plots  # matplotlib: only when a report is written

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    png_path = out_dir / f"{name}.png"
    plotted = plots.draw(report, png_path)
    if not plotted:
        png_path.unlink(missing_ok=True)
    _atomic_write(json_path, json.dumps(report, indent=2) + "\n")
    _atomic_write(out_dir / f"{name}.md", markdown(report, png_path.name if plotted else None))
    return json_path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _fig(series: dict[str, Any] | None, unit: str) -> str:
    if series is None:
        return "-"
    if unit == "sandboxes/s":
        return f"{series['value']:.2f}/s (windows p50 {series['median']:.1f})"
    return f"{series['median']:.1f} (p90 {series['p90']:.1f}, p99 {series['p99']:.1f}) {unit}"


def _verdict(case: dict[str, Any]) -> str:
    if case["status"] == "not_available":
        return "n/a"
    if case["status"] == "error":
        return "**error**"
    return {True: "pass", False: "**FAIL**", None: "-"}[case["pass"]]


def markdown(report: dict[str, Any], plot: str | None) -> str:
    m = report["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["load_avg_start"])
    lines = [
        "# Tartarus benchmark",
        "",
        f"- date: {report['date']} ({'quick' if report['quick'] else 'full'} mode,"
        f" {report['duration_s']:.0f} s)",
        f"- machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB,"
        f" kernel {m['kernel']}, load average at start {load}",
        f"- python {m['python']}, {m['crun'] or 'crun missing'}",
        "",
        "Every figure is the median (p90, p99) over repeated runs beside a floor measured in"
        " the same run; the ratio is Tartarus / floor (for case 6: p99 / case-2 p50).",
        "",
        "| # | case | Tartarus | floor | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in report["cases"]:
        ratio = f"{c['ratio']:.3f}" if c["ratio"] is not None else "-"
        target = c["target"]["text"] if c["target"] else "(none set)"
        measured = _fig(c["measured"], c["unit"]) if c["status"] == "ok" else c["reason"]
        cells = [str(c["id"]), c["title"], measured, _fig(c["floor"], c["unit"]), ratio, target]
        cells.append(_verdict(c))
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    if plot is not None:
        lines += ["", f"![per-case distributions beside their floors]({plot})"]
    lines += ["", "## Cases", ""]
    for c in report["cases"]:
        lines.append(f"### {c['id']}. {c['title']}")
        lines.append("")
        if c["status"] != "ok":
            lines += [f"{_verdict(c)}: {c['reason']}", ""]
            continue
        lines.append(f"- Tartarus: {c['measured']['label']}, {c['measured']['runs']} runs")
        lines.append(f"- floor: {c['floor']['label']}, {c['floor']['runs']} runs")
        if c["failures"]:
            lines.append(f"- failures: {c['failures']}")
        for key, value in c["extra"].items():
            lines.append(f"- {key}: {json.dumps(value)}")
        lines += [f"- {note}" for note in c["notes"]]
        lines.append("")
    return "\n".join(lines)
