"""One case's outcome: the measured series beside its floor, the ratio, the target, pass/fail.

A case that cannot run here (a feature not implemented yet) is `not_available` with the reason
and no numbers: the report never shows a figure that was not measured. A case whose harness
broke is `error`, also with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tartarus.bench.stats import Summary, Target, ratio

Status = Literal["ok", "not_available", "error"]
Stat = Literal["median", "p99", "value"]


@dataclass
class Series:
    """Repeated measurements; `value` is the headline when it is not the median (the overall
    rate of a throughput run, whose samples are per-window rates)."""

    label: str
    samples: list[float]
    value: float | None = None

    @property
    def summary(self) -> Summary:
        return Summary.of(self.samples)

    def stat(self, which: Stat) -> float:
        if which == "value":
            return self.value if self.value is not None else self.summary.median
        return self.summary.median if which == "median" else self.summary.p99

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "value": round(self.stat("value"), 3),
            **self.summary.to_dict(),
            "samples": [round(x, 3) for x in self.samples],
        }


@dataclass
class CaseResult:
    id: int
    key: str
    title: str
    unit: str
    target: Target | None  # None: the issue sets no target (the figure is for information)
    compare: Stat = "median"  # which statistic of `measured` is held against the target
    status: Status = "ok"
    reason: str | None = None
    measured: Series | None = None
    floor: Series | None = None
    failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.measured is None or self.floor is None:
            return None
        measured = round(self.measured.stat(self.compare), 3)  # as the report shows them
        floor = round(self.floor.stat("value"), 3)
        return round(ratio(measured, floor), 4) if floor > 0 else None

    @property
    def passed(self) -> bool | None:
        if self.status != "ok" or self.measured is None or self.target is None:
            return None
        if self.target.metric == "ratio":
            figure = self.ratio
        else:
            figure = round(self.measured.stat(self.compare), 3)
        return figure is not None and self.failures == 0 and self.target.met(figure)

    def unavailable(self, reason: str) -> CaseResult:
        self.status, self.reason = "not_available", reason
        self.measured = self.floor = None
        return self

    def to_dict(self) -> dict[str, Any]:
        r = self.ratio if self.status == "ok" else None
        return {
            "id": self.id,
            "key": self.key,
            "title": self.title,
            "unit": self.unit,
            "status": self.status,
            "reason": self.reason,
            "compare": self.compare,
            "measured": self.measured.to_dict() if self.measured else None,
            "floor": self.floor.to_dict() if self.floor else None,
            "ratio": r,
            "target": self.target.to_dict() if self.target else None,
            "failures": self.failures,
            "pass": self.passed,
            "extra": self.extra,
            "notes": self.notes,
        }
