"""`tartarus doctor`: what works on this host, and for what does not, why and what to install."""

from __future__ import annotations

import asyncio
import json
import platform
import shutil

import click
from rich.console import Console
from rich.table import Table

from tartarus.config import Settings
from tartarus.runtimes import hostns
from tartarus.runtimes.base import ProbeResult
from tartarus.runtimes.registry import RUNTIME_CLASSES, RuntimeRegistry

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
    results = asyncio.run(_probe_all())
    tools = {name: shutil.which(name) is not None for name in TOOLS}
    if as_json:
        click.echo(
            json.dumps(
                {
                    "runtimes": {n: r.__dict__ for n, r in results.items()},
                    "tools": tools,
                },
                indent=2,
            )
        )
    else:
        _print(results, tools, hybrid)
    required = [r.strip() for r in require.split(",") if r.strip()]
    missing = [r for r in required if not (r in results and results[r].works)]
    if missing:
        click.echo(f"error: required runtime(s) not working: {', '.join(missing)}", err=True)
        return 1
    return 0 if any(r.works for r in results.values()) else 1


async def _probe_all() -> dict[str, ProbeResult]:
    if hostns.is_hybrid_cgroup_host():
        hostns.enter()
    registry = RuntimeRegistry(Settings().state_dir)
    return {name: await registry.probe(name, fresh=True) for name in RUNTIME_CLASSES}


def _print(results: dict[str, ProbeResult], tools: dict[str, bool], hybrid: bool) -> None:
    console = Console()
    cgroup = "v1 hybrid (crun: private mount ns)" if hybrid else "unified or v1"
    console.print(f"host: Linux {platform.release()}, cgroups {cgroup}")
    table = Table("runtime", "works", "version", "why not / what to do")
    for name, result in results.items():
        why = "; ".join(x for x in (result.reason, result.hint) if x)
        table.add_row(name, "[green]yes[/]" if result.works else "[red]no[/]", result.version, why)
    console.print(table)
    for name, present in tools.items():
        if not present:
            console.print(f"[yellow]missing tool[/] {name}: apt-get install {TOOLS[name]}")
