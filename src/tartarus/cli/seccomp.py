"""`tartarus seccomp`: list, show, remove and generate seccomp profiles (Typhon).

Profiles live on this machine (`<state>/seccomp/`), where the sandboxes that name them start,
so these commands use the local state directory even with TARTARUS_URL set; `generate`
needs the host's strace and an embedded engine (node/seccomp_trace.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING

import click

from tartarus.cli.options import RUNTIME_NAMES

if TYPE_CHECKING:
    from tartarus.runtimes.seccomp_profiles import SeccompProfiles


@click.group()
def seccomp() -> None:
    """List, show, remove and generate seccomp profiles."""


def _profiles() -> SeccompProfiles:
    from tartarus.config import Settings
    from tartarus.runtimes.seccomp_profiles import SeccompProfiles

    return SeccompProfiles(Settings().state_dir)


@seccomp.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(as_json: bool) -> None:
    """List the built-in and generated profiles."""
    rows = _profiles().list()
    if as_json:
        data = [
            {
                "name": r.name,
                "builtin": r.builtin,
                "default_action": r.default_action,
                "syscalls": r.rules,
                "path": str(r.path) if r.path else None,
            }
            for r in rows
        ]
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{'NAME':<24} {'KIND':<10} {'DEFAULT':<16} SYSCALLS")
    for r in rows:
        kind = "built-in" if r.builtin else "generated"
        click.echo(f"{r.name:<24} {kind:<10} {r.default_action:<16} {r.rules}")


@seccomp.command("show")
@click.argument("name")
def show(name: str) -> None:
    """Print a profile as OCI seccomp JSON."""
    click.echo(json.dumps(_profiles().resolve(name), indent=2))


@seccomp.command("rm")
@click.argument("names", nargs=-1, required=True)
def rm(names: tuple[str, ...]) -> None:
    """Remove generated profiles."""
    profiles = _profiles()
    for name in names:
        profiles.delete(name)
        click.echo(name)


@seccomp.command("generate", context_settings={"ignore_unknown_options": True})
@click.option("--name", "-n", default=None, help="Profile name (default: the command's).")
@click.option("--template", "-t", default="python", show_default=True, help="Template.")
@click.option("--runtime", type=click.Choice(RUNTIME_NAMES), default=None, help="crun or runc.")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def generate(
    name: str | None,
    template: str,
    runtime: str | None,
    timeout: float,
    command: tuple[str, ...],
) -> int:
    """Trace COMMAND in a sandbox and write an allow-list profile for it.

    \b
    Example:  tartarus seccomp generate --name hello -- python3 -c 'print(1)'
              tartarus run --seccomp hello -- python3 -c 'print(2)'
    Exits with 1 (and writes no profile) if COMMAND fails.
    """
    chosen = name or _default_name(command[0])
    return asyncio.run(_generate(chosen, template, runtime, timeout, list(command)))


def _default_name(program: str) -> str:
    base = program.rsplit("/", 1)[-1].lower()
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in base).strip("-.") or "traced"


async def _generate(
    name: str, template: str, runtime: str | None, timeout: float, argv: list[str]
) -> int:
    from tartarus.node import seccomp_trace
    from tartarus.node.engine import Engine

    async def out(b: bytes) -> None:
        sys.stdout.buffer.write(b)
        sys.stdout.buffer.flush()

    async def err(b: bytes) -> None:
        sys.stderr.buffer.write(b)
        sys.stderr.buffer.flush()

    engine = Engine()
    await engine.open(reconcile=False)
    try:
        result = await seccomp_trace.generate(
            engine,
            name,
            argv,
            template=template,
            runtime=runtime,
            timeout=timeout,
            on_stdout=out,
            on_stderr=err,
        )
    finally:
        await engine.close()
    click.echo(
        f"seccomp profile {result.name}: {len(result.traced)} syscalls traced,"
        f" {result.allowed} allowed -> {result.path}",
        err=True,
    )
    return 0
