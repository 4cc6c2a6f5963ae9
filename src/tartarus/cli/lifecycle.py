"""`tartarus pause|resume|hibernate|wake|terminate ID...`: lifecycle steps of sandboxes that
outlive one call.

Like `kill`, they reach a server when `TARTARUS_URL` is set and the embedded engine otherwise
(`tartarus.cli.backend`); each prints the ids it acted on, one per line, and stops at the first
error with one `error:` line (a state that does not allow it exits 1, an unknown id 2). An
embedded engine leaves a paused sandbox paused when the command ends; the next command's
engine re-adopts it as it is.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import click

from tartarus.cli.backend import Backend, EmbeddedBackend, RemoteBackend, run
from tartarus.config import MAX_GRACE_S

Action = Callable[[Backend, str], Awaitable[str | None]]  # a line to print, else the id

SAVED_AS = re.compile(r"saved as snapshot (snap-[0-9a-f]+)")


def _each(sandbox_ids: tuple[str, ...], action: Action) -> None:
    async def body(backend: Backend) -> None:
        for sid in sandbox_ids:
            line = await action(backend, sid)
            click.echo(line or sid)  # at once: a later failure must not hide what was done

    run(body)


async def _pause(backend: Backend, sandbox_id: str) -> str | None:
    if isinstance(backend, RemoteBackend):
        from tartarus.sdk import _api

        await backend.client.call(_api.pause_sandbox(sandbox_id))
    else:
        assert isinstance(backend, EmbeddedBackend)
        await backend.engine.pause(sandbox_id)
    return None


async def _resume(backend: Backend, sandbox_id: str) -> str | None:
    if isinstance(backend, RemoteBackend):
        from tartarus.sdk import _api

        await backend.client.call(_api.resume_sandbox(sandbox_id))
    else:
        assert isinstance(backend, EmbeddedBackend)
        await backend.engine.resume(sandbox_id)
    return None


async def _hibernate(backend: Backend, sandbox_id: str) -> str | None:
    if isinstance(backend, RemoteBackend):
        from tartarus.sdk import _api

        await backend.client.call(_api.hibernate_sandbox(sandbox_id))
    else:
        assert isinstance(backend, EmbeddedBackend)
        await backend.engine.hibernate(sandbox_id)
    return None


async def _wake(backend: Backend, sandbox_id: str) -> str | None:
    if isinstance(backend, RemoteBackend):
        from tartarus.sdk import _api

        await backend.client.call(_api.wake_sandbox(sandbox_id))
    else:
        assert isinstance(backend, EmbeddedBackend)
        await backend.engine.wake(sandbox_id)
    return None


def _terminate(grace: float | None, checkpoint: bool) -> Action:
    async def action(backend: Backend, sandbox_id: str) -> str | None:
        if isinstance(backend, RemoteBackend):
            from tartarus.sdk import _api

            call = _api.terminate_sandbox(sandbox_id, grace, checkpoint)
            reason = (await backend.client.call(call)).reason
        else:
            assert isinstance(backend, EmbeddedBackend)
            ended = await backend.engine.terminate(sandbox_id, grace=grace, checkpoint=checkpoint)
            reason = ended.reason
        saved = SAVED_AS.search(reason or "") if checkpoint else None
        return f"{sandbox_id} {saved.group(1)}" if saved else None

    return action


@click.command()
@click.argument("sandbox_ids", nargs=-1, required=True, metavar="ID...")
def pause(sandbox_ids: tuple[str, ...]) -> None:
    """Freeze running sandboxes (memory kept, timeout stopped) and print their ids."""
    _each(sandbox_ids, _pause)


@click.command()
@click.argument("sandbox_ids", nargs=-1, required=True, metavar="ID...")
def resume(sandbox_ids: tuple[str, ...]) -> None:
    """Thaw paused sandboxes and print their ids; their timeouts count again."""
    _each(sandbox_ids, _resume)


@click.command()
@click.argument("sandbox_ids", nargs=-1, required=True, metavar="ID...")
def hibernate(sandbox_ids: tuple[str, ...]) -> None:
    """Save sandboxes to disk (memory and files) and free their memory; print their ids.

    Their timeouts stop counting; `inspect` shows `checkpoint_bytes`. Needs a runtime that
    can checkpoint here (gvisor; runc with CRIU: see `tartarus doctor`).
    """
    _each(sandbox_ids, _hibernate)


@click.command()
@click.argument("sandbox_ids", nargs=-1, required=True, metavar="ID...")
def wake(sandbox_ids: tuple[str, ...]) -> None:
    """Restore hibernated sandboxes as they were and print their ids (exec does it too)."""
    _each(sandbox_ids, _wake)


@click.command()
@click.option(
    "--grace",
    type=click.FloatRange(min=0, max=MAX_GRACE_S),
    default=None,
    metavar="SECONDS",
    help="Time between SIGTERM and the kill (default: the template's, else the config's).",
)
@click.option(
    "--checkpoint",
    is_flag=True,
    help="Snapshot each first (files, and memory where the runtime can); prints `ID SNAPSHOT`.",
)
@click.argument("sandbox_ids", nargs=-1, required=True, metavar="ID...")
def terminate(grace: float | None, checkpoint: bool, sandbox_ids: tuple[str, ...]) -> None:
    """SIGTERM every process of the sandboxes, give them the grace period, then kill; print
    the ids (`inspect` shows how each ended). A hibernated sandbox is woken first. With
    --checkpoint each is snapshotted first (`run --snapshot SNAPSHOT` starts it again); one
    that cannot be is left running, with an error.

    \b
    Example:  tartarus terminate --grace 5 sb-1a2b3c4d5e6f
              tartarus terminate --checkpoint sb-1a2b3c4d5e6f   # prints: sb-… snap-…
    """
    _each(sandbox_ids, _terminate(grace, checkpoint))
