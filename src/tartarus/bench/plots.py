"""One PNG with a panel per measured case: Tartarus' samples beside the floor's, on one axis.

Box plots with every sample drawn on top (runs are few, the points matter more than the box),
and the target drawn as a line where it is an absolute figure (a multiple of the floor's
median for ratio targets). Drawn from the report dict alone, with matplotlib's Agg backend.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

MEASURED_COLOR, FLOOR_COLOR, TARGET_COLOR = "#1f77b4", "#7f7f7f", "#d62728"


def _target_line(case: dict[str, Any]) -> float | None:
    target = case["target"]
    if target is None:
        return None
    if target["metric"] == "value":
        return float(target["limit"])
    return float(target["limit"]) * float(case["floor"]["value"])


def draw(report: dict[str, Any], path: Path) -> bool:
    """Draw the figure to `path`; False when no case has samples to show."""
    cases = [c for c in report["cases"] if c["status"] == "ok"]
    if not cases:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(cases), 3)
    rows = math.ceil(len(cases) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
    for ax, case in zip(axes.flat, cases, strict=False):
        data = [case["measured"]["samples"], case["floor"]["samples"]]
        box = ax.boxplot(
            data, orientation="horizontal", patch_artist=True, widths=0.5, showfliers=False
        )
        for patch, color in zip(box["boxes"], (MEASURED_COLOR, FLOOR_COLOR), strict=True):
            patch.set_facecolor(color)
            patch.set_alpha(0.35)
        for y, (samples, color) in enumerate(zip(data, (MEASURED_COLOR, FLOOR_COLOR), strict=True)):
            ax.scatter(samples, [y + 1] * len(samples), s=9, color=color, alpha=0.7, zorder=3)
        line = _target_line(case)
        if line is not None:
            ax.axvline(line, color=TARGET_COLOR, linestyle="--", linewidth=1, label="target")
            ax.legend(loc="best", fontsize=7)
        ax.set_yticks([1, 2], ["Tartarus", "floor"])
        unit = "sandboxes/s per 1 s window" if case["unit"] == "sandboxes/s" else case["unit"]
        ax.set_xlabel(unit)
        verdict = {True: "pass", False: "FAIL", None: "info"}[case["pass"]]
        if case["target"] is not None and case["target"]["metric"] == "value":
            figure = f", {case['measured'][case['compare']]:.1f} {case['unit']}"
        else:
            figure = f", ratio {case['ratio']:.2f}"
        ax.set_title(f"{case['id']}. {case['key']}{figure} ({verdict})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        if case["unit"] == "ms" and max(case["measured"]["max"], case["floor"]["max"]) > 2000:
            ax.set_xscale("log")
    for ax in list(axes.flat)[len(cases) :]:
        ax.set_visible(False)
    mode = "quick" if report["quick"] else "full"
    fig.suptitle(f"Tartarus benchmark {report['date']} ({mode}): samples beside floors")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
