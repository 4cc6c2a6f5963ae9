"""Sandbox commands that outlive one call: create, ps, inspect, exec, logs, kill.

They run against a server when `TARTARUS_URL` is set and against the embedded engine otherwise
(`tartarus.cli.backend`); the output is the same either way, so scripts work in both modes.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, BinaryIO

import click

from tartarus.cli.backend import Backend, BadInputError, CreateOptions, ExecOutcome, run
from tartarus.cli.options import (
    network_options,
    parse_env,
    parse_rules,
    sandbox_options,
    seccomp_option,
    snapshot_option,
    template_for,
)

STATES = (
    "pending",
    "starting",
    "running",
    "paused",
    "hibernated",
    "exited",
    "failed",
    "killed",
    "timed_out",
    "oom_killed",
)


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=flag)
        out[key] = value
    return out


def _check_resources(**given: float | None) -> None:
    """Reject out-of-range limits here, so both modes answer with the same message."""
    from pydantic import ValidationError

    from tartarus.cli.options import validation_message
    from tartarus.models import Resources

    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        Resources.model_validate({**Resources().model_dump(), **overrides})
    except ValidationError as exc:
        raise BadInputError(validation_message(exc)) from None


@click.command()
@sandbox_options
@snapshot_option
@seccomp_option
@network_options
@click.option("--metadata", "-m", multiple=True, metavar="K=V", help="Label (repeatable).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def create(
    template: str,
    snapshot: str | None,
    seccomp: str | None,
    network: str,
    allow: tuple[str, ...],
    runtime: str | None,
    cpu: float | None,
    memory: int | None,
    pids: int | None,
    disk: int | None,
    timeout: float,
    env: tuple[str, ...],
    workdir: str | None,
    metadata: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Start a sandbox and print its id; `-- COMMAND` makes COMMAND its main command.

    \b
    Example:  id=$(tartarus create -t python) && tartarus exec "$id" -- python3 -V
    """
    _check_resources(cpu=cpu, memory_mb=memory, pids=pids, disk_mb=disk)
    parse_rules(allow)
    options = CreateOptions(
        template=template_for(template, snapshot),
        runtime=runtime,
        cpu=cpu,
        memory_mb=memory,
        pids=pids,
        disk_mb=disk,
        timeout=timeout,
        env=parse_env(env),
        workdir=workdir,
        metadata=_pairs(metadata, "--metadata"),
        command=command,
        snapshot=snapshot,
        seccomp=seccomp,
        network=network,
        egress=allow,
    )

    async def body(backend: Backend) -> dict[str, Any]:
        return await backend.create(options)

    click.echo(run(body)["id"])


@click.command()
@click.option("--all", "-a", "show_all", is_flag=True, help="Include ended sandboxes.")
@click.option(
    "--state", "states", multiple=True, type=click.Choice(STATES), help="Only this state."
)
@click.option("--metadata", "-m", multiple=True, metavar="K=V", help="Only with this label.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def ps(show_all: bool, states: tuple[str, ...], metadata: tuple[str, ...], as_json: bool) -> None:
    """List sandboxes, newest first (by default only live ones)."""
    wanted = ["all"] if show_all else (list(states) or None)
    labels = _pairs(metadata, "--metadata")

    async def body(backend: Backend) -> list[dict[str, Any]]:
        return await backend.list_sandboxes(wanted, labels)

    items = run(body)
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("ID", "TEMPLATE", "STATE", "RUNTIME", "AGE", "EXIT"):
        table.add_column(column, no_wrap=True)
    now = datetime.now(UTC)
    for item in items:
        exit_code = item["exit_code"]
        table.add_row(
            item["id"],
            item["template"],
            item["state"],
            item["runtime"],
            _age(now, item["created_at"]),
            "" if exit_code is None else str(exit_code),
        )
    Console(soft_wrap=True).print(table)


def _age(now: datetime, created_at: str) -> str:
    seconds = max(0, int((now - datetime.fromisoformat(created_at)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@click.command()
@click.argument("sandbox_id")
def inspect(sandbox_id: str) -> None:
    """Print a sandbox as JSON, with its state events and timings."""

    async def body(backend: Backend) -> dict[str, Any]:
        return await backend.get(sandbox_id)

    click.echo(json.dumps(run(body), indent=2))


@click.command("exec", context_settings={"ignore_unknown_options": False})
@click.option("--env", "-e", multiple=True, metavar="K=V", help="Environment variable.")
@click.option("--workdir", "-w", default=None, metavar="PATH", help="Working directory.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Kill the command after this long (exit code 124).",
)
@click.option("--stdin", "pass_stdin", is_flag=True, help="Send this command's stdin.")
@click.argument("sandbox_id")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(
    env: tuple[str, ...],
    workdir: str | None,
    timeout: float | None,
    pass_stdin: bool,
    sandbox_id: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in a running sandbox, stream its output, exit with its exit code.

    \b
    Example:  tartarus exec sb-1a2b3c4d5e6f -- sh -c 'echo hi'
    """
    env_map = parse_env(env)
    stdin = sys.stdin.buffer.read() if pass_stdin else None
    streams = _output_streams()

    def output(stream: str, data: bytes) -> None:
        streams[stream].write(data)
        streams[stream].flush()

    async def body(backend: Backend) -> ExecOutcome:
        return await backend.exec(
            sandbox_id,
            list(command),
            env=env_map,
            cwd=workdir,
            timeout=timeout,
            stdin=stdin,
            output=output,
        )

    outcome = run(body)
    click.get_current_context().exit(outcome.shell_code)


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the sandbox ends.")
@click.argument("sandbox_id")
def logs(follow: bool, sandbox_id: str) -> None:
    """Print a sandbox's main command output (stdout and stderr to the matching streams)."""
    streams = _output_streams()

    async def body(backend: Backend) -> None:
        async for stream, data in backend.logs(sandbox_id, follow):
            streams[stream].write(data)
            streams[stream].flush()

    run(body)


@click.command()
@click.argument("sandbox_ids", nargs=-1, required=True, metavar="ID...")
def kill(sandbox_ids: tuple[str, ...]) -> None:
    """Kill sandboxes (ended ones are left as they are) and print their ids."""

    async def body(backend: Backend) -> list[str]:
        return [(await backend.kill(sid))["id"] for sid in sandbox_ids]

    for sid in run(body):
        click.echo(sid)


def _output_streams() -> dict[str, BinaryIO]:
    # looked up per call: CliRunner (and pytest) swap sys.stdout/stderr
    return {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
