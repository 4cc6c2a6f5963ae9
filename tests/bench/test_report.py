"""The benchmark's arithmetic and its report: summaries, ratios, pass/fail, the files written,
and the validator CI relies on (it must reject every kind of malformed report)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tartarus.bench import report
from tartarus.bench.cases import CASES, select
from tartarus.bench.check import check_report
from tartarus.bench.results import CaseResult, Series
from tartarus.bench.stats import Summary, Target, percentile, ratio, window_rates

# -- stats ------------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    xs = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 4.0
    assert percentile(xs, 50) == 2.5
    assert percentile(xs, 90) == pytest.approx(3.7)
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("bad", [-1, 101])
def test_percentile_rejects_bad_input(bad: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], bad)
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


def test_summary_of_samples() -> None:
    s = Summary.of([float(x) for x in range(1, 101)])
    assert (s.runs, s.median, s.min, s.max, s.mean) == (100, 50.5, 1.0, 100.0, 50.5)
    assert s.p90 == pytest.approx(90.1)
    assert s.p99 == pytest.approx(99.01)
    with pytest.raises(ValueError):
        Summary.of([])


def test_window_rates_count_per_second_and_drop_the_tail() -> None:
    assert window_rates([0.1, 0.2, 1.5, 2.9, 3.0, 3.2], 3.0) == [2.0, 1.0, 1.0]
    assert window_rates([0.1, 0.2], 1.0, window=0.5) == [4.0, 0.0]
    with pytest.raises(ValueError):
        window_rates([0.1], 0.5)


def test_targets_and_ratio() -> None:
    at_most = Target("ratio", "<=", 1.3, "")
    at_least = Target("ratio", ">=", 0.8, "")
    assert at_most.met(1.3) and not at_most.met(1.31)
    assert at_least.met(0.8) and not at_least.met(0.79)
    assert ratio(3.0, 2.0) == 1.5
    with pytest.raises(ValueError):
        ratio(1.0, 0.0)
    with pytest.raises(ValueError):
        Target.from_dict({"metric": "speed", "op": "<=", "limit": 1})


# -- results ------------------------------------------------------------------------------------


COLD_TARGET = Target("ratio", "<=", 1.3, "<= 1.3x")


def _case(
    measured: list[float],
    floor: list[float],
    target: Target | None = COLD_TARGET,
    **kw: Any,
) -> CaseResult:
    result = CaseResult(id=1, key="cold", title="cold create", unit="ms", target=target, **kw)
    result.measured = Series("sdk", measured)
    result.floor = Series("crun", floor)
    return result


def test_ratio_and_pass_follow_the_medians() -> None:
    ok = _case([12.0, 13.0, 50.0], [10.0, 10.0, 11.0])
    assert ok.ratio == 1.3 and ok.passed is True
    slow = _case([14.0, 14.0, 14.0], [10.0, 10.0, 10.0])
    assert slow.ratio == 1.4 and slow.passed is False


def test_failures_fail_a_case_and_p99_can_be_compared() -> None:
    burst = _case(
        [10.0] * 98 + [200.0, 200.0],
        [10.0, 10.0],
        Target("ratio", "<=", 10.0, ""),
        compare="p99",
    )
    assert burst.ratio == 20.0 and burst.passed is False  # the median alone would pass
    fine = _case([10.0] * 10, [10.0], Target("ratio", "<=", 10.0, ""), compare="p99")
    assert fine.passed is True
    fine.failures = 1
    assert fine.passed is False


def test_value_targets_and_headline_values() -> None:
    density = _case([12.0, 14.0, 20.0], [9.0], Target("value", "<=", 15.0, "<= 15 MiB"))
    assert density.passed is True  # the median, 14, against 15
    rate = _case([1.0, 3.0], [4.0], Target("ratio", ">=", 0.8, ""), compare="value")
    assert rate.measured is not None and rate.floor is not None
    rate.measured.value, rate.floor.value = 9.0, 10.0
    assert rate.ratio == 0.9 and rate.passed is True


def test_unavailable_and_untargeted_cases_carry_no_verdict() -> None:
    gone = _case([1.0], [1.0]).unavailable("hibernate not implemented")
    data = gone.to_dict()
    assert data["status"] == "not_available" and data["reason"] == "hibernate not implemented"
    assert data["measured"] is None and data["ratio"] is None and data["pass"] is None
    info = _case([2.0], [1.0], target=None)
    assert info.ratio == 2.0 and info.passed is None


# -- the report and its validation ---------------------------------------------------------------


def _results() -> list[CaseResult]:
    cold = _case([12.0, 13.0, 15.0], [10.0, 11.0, 10.5])
    cold.extra["phases_ms"] = {"runtime": 40.0}
    cold.notes.append("a note")
    rate = CaseResult(5, "throughput", "throughput", "sandboxes/s", Target("ratio", ">=", 0.8, ""))
    rate.compare = "value"
    rate.measured = Series("sdk", [7.0, 9.0, 8.0], value=8.0)
    rate.floor = Series("raw", [100.0, 120.0, 110.0], value=110.0)
    hibernate = CaseResult(8, "hibernate", "hibernate", "ms", None).unavailable(
        "not available (hibernate not implemented)"
    )
    return [hibernate, rate, cold]


def _write(tmp_path: Path) -> Path:
    data = report.build(
        _results(),
        machine=report.machine_info(),
        started=datetime.now(UTC),
        duration_s=12.3,
        quick=True,
    )
    return report.write(data, tmp_path)


def test_written_report_is_well_formed(tmp_path: Path) -> None:
    path = _write(tmp_path)
    assert check_report(path) == []
    data = json.loads(path.read_text())
    assert [c["id"] for c in data["cases"]] == [1, 5, 8]
    assert data["cases"][1]["ratio"] == pytest.approx(8.0 / 110.0, abs=1e-4)
    assert data["cases"][1]["pass"] is False
    assert (tmp_path / "latest.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "latest.md").read_text()
    assert "| 1 | cold create | 13.0 (p90" in md
    assert "not available (hibernate not implemented)" in md
    assert "load average at start" in md and "](latest.png)" in md


def _mutate(path: Path, change: Callable[[dict[str, Any]], None]) -> list[str]:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return check_report(path)


def _set(case: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["cases"][case][key] = value

    return change


def _set_stat(case: int, series: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["cases"][case][series][key] = value

    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_set(0, "ratio", 2.0), "case 1.ratio"),
        (_set(0, "pass", False), "case 1.pass"),
        (_set(0, "status", "maybe"), "case 1.status"),
        (_set(0, "failures", -1), "case 1.failures"),
        (_set(2, "ratio", 1.0), "case 8: a not_available case must carry no figures"),
        (_set(2, "reason", ""), "case 8: a not_available case must say why"),
        (_set_stat(0, "measured", "p90", 1.0), "min <= median <= p90"),
        (_set_stat(0, "floor", "samples", [1.0]), "1 samples for 3 runs"),
        (_set_stat(1, "floor", "median", "fast"), "case 5.floor.median: not a number"),
        (lambda d: d.update(schema="other/1"), "schema"),
        (lambda d: d["machine"].update(load_avg_start=[1.0]), "load_avg_start"),
        (lambda d: d["cases"].append(d["cases"][0]), "an id appears twice"),
        (lambda d: d.update(cases=[]), "cases: must be a non-empty list"),
    ],
)
def test_check_rejects_malformed_reports(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    problems = _mutate(_write(tmp_path), change)
    assert any(expected in p for p in problems), problems


def test_check_wants_the_markdown_and_the_plot(tmp_path: Path) -> None:
    path = _write(tmp_path)
    (tmp_path / "latest.png").write_bytes(b"not a png")
    assert any("latest.png" in p for p in check_report(path))
    (tmp_path / "latest.md").unlink()
    assert any("latest.md: missing" in p for p in check_report(path))
    assert "cannot read" in check_report(tmp_path / "nothing.json")[0]


# -- selection and the command line --------------------------------------------------------------


def test_select_keeps_the_running_order() -> None:
    assert [c.id for c in select(None)] == [c.id for c in CASES]
    assert [c.id for c in select("7, 1,exec")] == [1, 4, 7]
    assert sorted(c.id for c in CASES) == list(range(1, 10))
    for bad in ("10", "fast", ","):
        with pytest.raises(ValueError):
            select(bad)


def _tartarus(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def test_cli_check_and_bad_input(tmp_path: Path, tartarus_bin: str) -> None:
    path = _write(tmp_path)
    ok = _tartarus(tartarus_bin, "bench", "--check", str(path))
    assert ok.returncode == 0 and "well formed" in ok.stdout
    path.write_text("{}")
    bad = _tartarus(tartarus_bin, "bench", "--check", str(path))
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ") and "is malformed" in bad.stderr
    assert len(bad.stderr.splitlines()) == 1
    unknown = _tartarus(tartarus_bin, "bench", "--only", "42")
    assert unknown.returncode == 2
    assert unknown.stderr.splitlines() == [
        "error: Invalid value for --only: unknown case '42'; cases: 1=cold, 2=pooled,"
        " 3=pandas, 4=exec, 5=throughput, 6=burst, 7=density, 8=hibernate, 9=microvm"
    ]
