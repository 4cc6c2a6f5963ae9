"""Summaries and targets: what every benchmark figure is reduced to before it is reported.

A figure is never a single run: it is the median with p90/p99 over repeated runs, and a target
is a comparison (`<=` or `>=`) on either the ratio to the floor or the value itself. Pure
functions only, so the report's arithmetic is unit-tested without a sandbox.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Op = Literal["<=", ">="]
Metric = Literal["ratio", "value"]


def percentile(samples: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0..100")
    xs = sorted(samples)
    pos = (len(xs) - 1) * p / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    runs: int
    median: float
    p90: float
    p99: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise ValueError("cannot summarise zero runs")
        return cls(
            runs=len(samples),
            median=percentile(samples, 50),
            p90=percentile(samples, 90),
            p99=percentile(samples, 99),
            min=min(samples),
            max=max(samples),
            mean=sum(samples) / len(samples),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "median": _round(self.median),
            "p90": _round(self.p90),
            "p99": _round(self.p99),
            "min": _round(self.min),
            "max": _round(self.max),
            "mean": _round(self.mean),
        }


@dataclass(frozen=True)
class Target:
    """`metric op limit`, e.g. ratio <= 1.3; `text` is how the issue words it."""

    metric: Metric
    op: Op
    limit: float
    text: str

    def met(self, value: float) -> bool:
        return value <= self.limit if self.op == "<=" else value >= self.limit

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "op": self.op, "limit": self.limit, "text": self.text}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Target:
        metric, op = data.get("metric"), data.get("op")
        if metric not in ("ratio", "value") or op not in ("<=", ">="):
            raise ValueError(f"bad target {data!r}")
        limit = data.get("limit")
        if not isinstance(limit, int | float) or isinstance(limit, bool):
            raise ValueError(f"bad target limit {limit!r}")
        return cls(metric, op, float(limit), str(data.get("text", "")))


def ratio(measured: float, floor: float) -> float:
    """measured / floor; a zero floor cannot be compared against."""
    if floor <= 0:
        raise ValueError(f"floor must be positive, got {floor}")
    return measured / floor


def window_rates(completions: Sequence[float], duration: float, window: float = 1.0) -> list[float]:
    """Completions per second in consecutive windows of `window` s over [0, duration);
    completion times are seconds since the start. A partial last window is dropped."""
    if duration <= 0 or window <= 0:
        raise ValueError("duration and window must be positive")
    count = int(duration // window)
    if count == 0:
        raise ValueError(f"duration {duration}s is shorter than one {window}s window")
    buckets = [0] * count
    for t in completions:
        i = int(t // window)
        if 0 <= i < count:
            buckets[i] += 1
    return [b / window for b in buckets]


def _round(x: float) -> float:
    return round(x, 3)
