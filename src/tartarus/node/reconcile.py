"""What an engine does at start-up with what earlier engines left behind.

A sandbox whose owning engine process is gone is claimed (atomically, so two engines never
act on the same one) and then either re-adopted or reaped. An engine opened with
`adopt=True` re-adopts a running sandbox whose guest agent still answers: it supervises it
again with the time it has left and re-attaches its main command, which the guest kept
running and journalling. Anything else is reaped: the container killed and deleted, the
layer and cgroups removed, the record ended as failed with the reason. Containers in our
runtime roots and sandbox directories that no record accounts for are removed too, and so
are the cgroup shadows of containers that have ended (runtimes/hostns.py).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from tartarus.models import TERMINAL_STATES, Sandbox, SandboxState
from tartarus.node import owners
from tartarus.node.overlay import Overlay
from tartarus.node.readopt import readopt
from tartarus.runtimes import cgroups, hostns, reaper
from tartarus.runtimes.bundle import CGROUP_PARENT

if TYPE_CHECKING:
    from tartarus.node.engine import Engine

log = structlog.get_logger("tartarus.reconcile")

LIVE_STATES = [s for s in SandboxState if s not in TERMINAL_STATES]


async def reconcile(engine: Engine) -> list[str]:
    """Adopt or reap orphaned sandboxes; return the ids of the reaped ones."""
    reaped: list[str] = []
    keep: set[str] = set()
    for sid, owner in engine.sandboxes.owners(LIVE_STATES).items():
        if owners.alive(owner) or not engine.sandboxes.claim(sid, owner, engine.owner):
            keep.add(sid)
            continue
        sandbox = engine.sandboxes.get(sid)
        if engine.adopt and await readopt(engine, sandbox):
            keep.add(sid)
            continue
        runtime = engine.runtimes.runtimes.get(sandbox.runtime)
        if runtime is not None:
            await runtime.delete(sid)
        await _reap_init(engine.settings.sandboxes_dir / sid)
        Overlay(engine.settings.sandboxes_dir / sid).remove()
        await cgroups.drain(CGROUP_PARENT, sid)
        cgroups.remove(CGROUP_PARENT, sid)
        if _expired(sandbox):  # its own deadline ended it while no engine watched
            state, reason = SandboxState.TIMED_OUT, "wall-clock timeout reached (no engine)"
        else:
            state, reason = SandboxState.FAILED, "engine exited before the sandbox ended"
        engine.sandboxes.update(sandbox, state=state, reason=reason)
        engine.jobs.abandon(sid, reason)
        engine.sandboxes.set_owner(sid, None)
        reaped.append(sid)

    def orphan(sid: str) -> bool:
        # re-read: a sandbox created since the first query is inserted before it gets a
        # container or a directory, so its live owner shows here
        return sid not in keep and not owners.alive(engine.sandboxes.owner(sid))

    # Containers without any record exist only if the store was lost: a sweep costs a runtime
    # call per runtime, so only long-running engines (servers) do it, not every CLI command.
    for runtime in engine.runtimes.runtimes.values() if engine.adopt else ():
        for cid in await runtime.list_ids():
            if cid.startswith("sb-") and orphan(cid):
                await runtime.delete(cid)
                await cgroups.drain(CGROUP_PARENT, cid)
                cgroups.remove(CGROUP_PARENT, cid)
    sandboxes_dir = engine.settings.sandboxes_dir
    if sandboxes_dir.is_dir():
        for path in sandboxes_dir.iterdir():
            if orphan(path.name):
                await _reap_init(path)
                Overlay(path).remove()
                shutil.rmtree(path, ignore_errors=True)
    if swept := hostns.sweep_shadow_cgroups(CGROUP_PARENT):
        log.info("removed cgroup shadows of ended containers", ids=swept)
    if reaped:
        log.info("reaped orphaned sandboxes", ids=reaped)
    return reaped


def _expired(sandbox: Sandbox) -> bool:
    """A running sandbox past its deadline (a paused one's time does not count)."""
    return (
        sandbox.state == SandboxState.RUNNING
        and sandbox.expires_at is not None
        and sandbox.expires_at <= datetime.now(UTC)
    )


async def _reap_init(directory: Path) -> None:
    """A dead engine's sandbox init may have been re-parented to us (we are a subreaper)."""
    try:
        pid = int((directory / "bundle" / "init.pid").read_text().strip())
    except (OSError, ValueError):
        return
    await reaper.reap(pid, timeout=1.0)
