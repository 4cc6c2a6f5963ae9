"""`tartarus snapshot ID [--name N] [--memory]` and `tartarus checkpoints ls|rm`: what
sandboxes saved to disk.

Two kinds of checkpoint take disk space: snapshots (a sandbox's files, with `--memory` its
processes too, which `run/create --snapshot` start new sandboxes from) and hibernation
images (a hibernated sandbox's memory and files, removed when it wakes or ends).
`checkpoints ls` lists both with their size and age; `checkpoints rm` deletes a snapshot
(`snap-...` or its name) or ends a hibernated sandbox (`sb-...`), which removes its image.
Like the other commands they reach a server when `TARTARUS_URL` is set and the embedded
engine otherwise.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from tartarus.cli.backend import Backend, BadInputError, EmbeddedBackend, RemoteBackend, run


async def _take(
    backend: Backend, sandbox_id: str, name: str | None, memory: bool
) -> dict[str, Any]:
    if isinstance(backend, RemoteBackend):
        from tartarus.sdk import _api

        info = await backend.client.call(_api.snapshot_sandbox(sandbox_id, name, memory))
        return info.model_dump(mode="json")
    assert isinstance(backend, EmbeddedBackend)
    snap = await backend.engine.snapshot(sandbox_id, name=name, memory=memory)
    return snap.model_dump(mode="json", exclude={"tenant"})


@click.command()
@click.option("--name", default=None, help="A name to start sandboxes from instead of the id.")
@click.option(
    "--memory",
    is_flag=True,
    help="Save its processes too (runtimes that checkpoint: gvisor, runc with CRIU).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
@click.argument("sandbox_id", metavar="ID")
def snapshot(sandbox_id: str, name: str | None, memory: bool, as_json: bool) -> None:
    """Save a sandbox's files as a snapshot and print its id (the sandbox is paused while
    they are copied). With --memory its processes are saved too (it is hibernated and woken
    for that): sandboxes started from it go on from where it was, on the same runtime.

    \b
    Example:  snap=$(tartarus snapshot "$id" --name seeded)
              tartarus run --snapshot seeded -- python3 main.py
    """

    async def body(backend: Backend) -> dict[str, Any]:
        return await _take(backend, sandbox_id, name, memory)

    snap = run(body)
    click.echo(json.dumps(snap, indent=2) if as_json else snap["id"])


async def _list(backend: Backend) -> list[dict[str, Any]]:
    """Snapshots and hibernated sandboxes as rows: id, kind, name, size, created."""
    if isinstance(backend, RemoteBackend):
        from tartarus.sdk import _api

        snaps = [
            s.model_dump(mode="json") for s in await backend.client.call(_api.list_snapshots())
        ]
    else:
        assert isinstance(backend, EmbeddedBackend)
        found = backend.engine.snapshots.list(any_tenant=True)
        snaps = [s.model_dump(mode="json") for s in found]
    rows = [
        {
            "id": s["id"],
            "kind": "snapshot",
            "name": s["name"],
            "template": s["template"],
            "size_bytes": s["size_bytes"],
            "created_at": s["created_at"],
        }
        for s in snaps
    ]
    for sb in await backend.list_sandboxes(["hibernated"], {}):
        rows.append(
            {
                "id": sb["id"],
                "kind": "hibernated",
                "name": None,
                "template": sb["template"],
                "size_bytes": sb.get("checkpoint_bytes") or 0,
                "created_at": sb.get("hibernated_at") or sb["created_at"],
            }
        )
    return rows


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _age(created: str) -> str:
    seconds = (datetime.now(UTC) - datetime.fromisoformat(created)).total_seconds()
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


@click.group()
def checkpoints() -> None:
    """Snapshots and hibernation images on disk: list them, delete them."""


@checkpoints.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def ls(as_json: bool) -> None:
    """List snapshots and hibernated sandboxes with their size on disk and age."""
    rows = run(_list)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = f"{'ID':<18} {'KIND':<10} {'NAME':<20} {'TEMPLATE':<12} {'SIZE':>10} {'AGE':>5}"
    click.echo(header)
    for r in rows:
        click.echo(
            f"{r['id']:<18} {r['kind']:<10} {r['name'] or '-':<20} {r['template']:<12}"
            f" {_size(r['size_bytes']):>10} {_age(r['created_at']):>5}"
        )


async def _remove(backend: Backend, ref: str) -> None:
    if ref.startswith("sb-"):  # a hibernation image goes with its sandbox
        sandbox = await backend.get(ref)
        if sandbox["state"] != "hibernated":
            raise BadInputError(f"{ref} is {sandbox['state']}, not hibernated: no image to remove")
        await backend.kill(ref)
        return
    if isinstance(backend, RemoteBackend):
        from tartarus.sdk import _api

        await backend.client.call(_api.delete_snapshot(ref))
    else:
        assert isinstance(backend, EmbeddedBackend)
        from tartarus.node import snapshots

        snapshots.delete(backend.engine, ref)


@checkpoints.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="ID...")
def rm(refs: tuple[str, ...]) -> None:
    """Delete snapshots (id or name) and their files, or end hibernated sandboxes (sb-...)
    with their images; prints each one done."""

    async def body(backend: Backend) -> None:
        for ref in refs:
            await _remove(backend, ref)
            click.echo(ref)  # at once: a later failure must not hide what was done

    run(body)
