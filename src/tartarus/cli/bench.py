"""`tartarus bench`: the benchmark of issue 5 against a fresh local server, or `--check` a report.

It always starts its own `tartarus server` (temp state dir, loopback), whatever TARTARUS_URL
says, because its floors run raw crun on this machine: the two sides must share the host.
Missed targets do not fail the command (the report says pass/fail); a case that could not run
because the harness broke does (exit 1), after the report is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from tartarus.bench.cases import select
from tartarus.bench.check import check_report

DEFAULT_OUT = Path("bench/results")


def _line(case: dict[str, Any]) -> str:
    head = f"{case['id']} {case['key']:<10}"
    if case["status"] != "ok":
        return f"{head} {case['status']}: {case['reason']}"
    measured, floor = case["measured"], case["floor"]
    verdict = {True: "pass", False: "FAIL", None: "info"}[case["pass"]]
    unit = case["unit"]
    return (
        f"{head} {measured['value']:>9.2f} {unit} vs floor {floor['value']:.2f} {unit}:"
        f" ratio {case['ratio']:.3f} -> {verdict}"
    )


@click.command()
@click.option("--quick", is_flag=True, help="Fewer runs and shorter loops (under 2 minutes).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Directory for latest.json, latest.md and latest.png.",
)
@click.option(
    "--only",
    metavar="CASE,...",
    default=None,
    help="Run only these cases: numbers 1-9 or names (cold, exec, throughput, pooled,"
    " pandas, burst, density, hibernate, microvm).",
)
@click.option(
    "--check",
    "check_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Validate the report FILE (and the .md/.png beside it) instead of running.",
)
def bench(quick: bool, out: Path, only: str | None, check_file: Path | None) -> None:
    """Measure Tartarus beside raw crun and host python3, and write a report (run as root)."""
    if check_file is not None:
        problems = check_report(check_file)
        if problems:
            raise click.ClickException(
                f"{check_file} is malformed: {'; '.join(problems[:10])}"
                + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
            )
        click.echo(f"{check_file}: well formed")
        return
    try:
        select(only)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--only") from None
    if os.geteuid() != 0:
        raise click.ClickException("tartarus bench must run as root (it starts sandboxes)")
    from tartarus.bench.runner import BenchError, run

    try:
        outcome = run(quick=quick, out_dir=out, only=only)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    for case in outcome.report["cases"]:
        click.echo(_line(case))
    click.echo(f"report: {outcome.json_path.with_suffix('.md')}")
    problems = check_report(outcome.json_path)
    if problems:
        raise click.ClickException(f"the report is malformed: {'; '.join(problems[:5])}")
    if outcome.errors:
        failed = ", ".join(str(i) for i in outcome.errors)
        raise click.ClickException(f"case(s) {failed} could not run; see the report")
