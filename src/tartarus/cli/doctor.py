"""`tartarus doctor`: what works on this host, and for what does not, why and what to install.

Each runtime is probed afresh (a tiny sandbox is started and paused), and shown with the
capabilities the probe confirmed: the same report as `GET /v1/runtimes`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import platform
import shutil
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tartarus.config import Settings
from tartarus.runtimes import hostns
from tartarus.runtimes.registry import RuntimeRegistry, RuntimeReport

TOOLS = {
    "debootstrap": "debootstrap",
    "umoci": "umoci",
    "skopeo": "skopeo",
    "busybox": "busybox-static",
}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--require",
    default="",
    metavar="R1,R2",
    help="Exit 1 unless each of these runtimes works (for CI).",
)
def doctor(as_json: bool, require: str) -> int:
    """Probe each runtime by starting a tiny sandbox, and check the host tools."""
    hybrid = hostns.is_hybrid_cgroup_host()  # before probing hides the cgroup2 mount from us
    reports = {r.name: r for r in asyncio.run(_probe_all())}
    tools = {name: shutil.which(name) is not None for name in TOOLS}
    if as_json:
        runtimes = {name: _as_json(r) for name, r in reports.items()}
        click.echo(json.dumps({"runtimes": runtimes, "tools": tools}, indent=2))
    else:
        _print(list(reports.values()), tools, hybrid)
    required = [r.strip() for r in require.split(",") if r.strip()]
    missing = [r for r in required if not (r in reports and reports[r].probe.works)]
    if missing:
        click.echo(f"error: required runtime(s) not working: {', '.join(missing)}", err=True)
        return 1
    return 0 if any(r.probe.works for r in reports.values()) else 1


async def _probe_all() -> list[RuntimeReport]:
    if hostns.is_hybrid_cgroup_host():
        hostns.enter()
    settings = Settings()
    registry = RuntimeRegistry(settings.state_dir)
    return await registry.report(fresh=True, default=settings.default_runtime)


def _as_json(report: RuntimeReport) -> dict[str, Any]:
    caps = dataclasses.asdict(report.capabilities)
    caps["missing"] = report.missing
    return {**dataclasses.asdict(report.probe), "default": report.default, "capabilities": caps}


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def _print(reports: list[RuntimeReport], tools: dict[str, bool], hybrid: bool) -> None:
    console = Console()
    cgroup = "v1 hybrid (crun: private mount ns)" if hybrid else "unified or v1"
    console.print(f"host: Linux {platform.release()}, cgroups {cgroup}")
    table = Table("runtime", "works", "version", "pause", "checkpoint", "network", "exec", "notes")
    for r in reports:
        caps = r.capabilities
        notes = [x for x in (r.probe.reason, r.probe.hint, r.probe.detail) if x]
        if r.probe.works and "pause" in r.missing:
            notes.append(f"pause: {r.missing['pause']}")
        if r.probe.works and "checkpoint" in r.missing:
            notes.append(f"checkpoint: {r.missing['checkpoint']}")
        name = f"{r.name} *" if r.default else r.name
        table.add_row(
            name,
            _yes(r.probe.works),
            r.probe.version.split()[-1] if r.probe.version else "",
            _yes(caps.pause),
            _yes(caps.checkpoint),
            ",".join(caps.network_modes),
            caps.exec_channel,
            "; ".join(notes),
        )
    table.caption = "* the default runtime"
    console.print(table)
    for name, present in tools.items():
        if not present:
            console.print(f"[yellow]missing tool[/] {name}: apt-get install {TOOLS[name]}")
