"""Re-adoption: a new engine supervises again a sandbox whose engine died.

The guest agent outlived its engine (it is the sandbox's init, and its socket is on disk), so
a running sandbox whose agent still answers is taken over with the time it has left, and a
main command that runs detached in the guest is re-attached from its journal. A paused one
stays paused; a hibernated one stays hibernated (its files are on disk). Anything that does
not answer as expected is left to the caller (node/reconcile.py), which reaps it.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog

from tartarus.errors import TartarusError
from tartarus.models import Sandbox, SandboxState
from tartarus.node import hibernate, lifecycle, supervisor
from tartarus.node.engine import environment
from tartarus.node.live import LiveSandbox, MainIO
from tartarus.runtimes.base import ContainerStatus

if TYPE_CHECKING:
    from tartarus.node.engine import Engine

log = structlog.get_logger("tartarus.engine")

# a dead agent is refused at once; a live one may be slow: a TCG guest on a busy host
READOPT_PING_S = 10.0


async def readopt(engine: Engine, sandbox: Sandbox) -> bool:
    """Supervise again a running sandbox whose engine died; False if it cannot be. A
    paused one stays paused, with the time it had left; a hibernated one stays hibernated.

    A main command is re-attached when it runs detached in the guest; one that was an
    ordinary exec (stdin fed by the dead engine) died with its connection.
    """
    runtime = engine.runtimes.runtimes.get(sandbox.runtime)
    paused = sandbox.state == SandboxState.PAUSED  # stays paused, its time left kept
    hibernated = sandbox.state == SandboxState.HIBERNATED  # nothing runs: files on disk
    if not (paused or hibernated or sandbox.state == SandboxState.RUNNING) or runtime is None:
        return False
    expected = ContainerStatus.PAUSED if paused else ContainerStatus.RUNNING
    if not hibernated and await runtime.status(sandbox.id) != expected:
        return False
    try:
        template = engine.catalog.resolve(sandbox.spec.template)
    except TartarusError:
        return False
    env, workdir = environment(sandbox.spec, template.spec)
    if sandbox.expires_at is None:
        started = sandbox.started_at or sandbox.created_at
        sandbox = sandbox.model_copy(
            update={"expires_at": started + timedelta(seconds=sandbox.spec.timeout)}
        )
    directory = engine.settings.sandboxes_dir / sandbox.id
    live = LiveSandbox(sandbox, runtime, directory, directory / "a.sock", env, workdir)
    with contextlib.suppress(OSError, ValueError):
        live.init_pid = int((directory / "bundle" / "init.pid").read_text())
    try:
        if not hibernated and (reattach := getattr(runtime, "reattach", None)) is not None:
            await reattach(sandbox.id, live.socket_path)  # gVisor: a new agent relay
        if hibernated:
            if not hibernate.readoptable(engine, live):
                return False
        elif not paused:
            await asyncio.wait_for(live.client.ping(), timeout=READOPT_PING_S)
        elif not await lifecycle.readoptable_while_paused(engine, live):
            return False
        if sandbox.spec.command and sandbox.state == SandboxState.RUNNING:
            status = await asyncio.wait_for(live.client.main_status(), timeout=2.0)
            if not status.get("started"):
                return False
    except (TartarusError, TimeoutError, OSError):  # AgentError; a VM that ended meanwhile
        return False
    try:  # its DNS resolver died with the last engine; a hibernated one may lack a netns
        await engine.network.ensure(sandbox.id, directory)
    except (TartarusError, OSError) as exc:
        log.warning("could not restore a sandbox's network", sandbox=sandbox.id, error=str(exc))
        return False
    hibernate.attach(engine, live)  # now: a use may come before the supervisor runs
    engine._live[sandbox.id] = live
    engine.erinyes.watch(live)
    resume = bool(sandbox.spec.command)
    live.task = asyncio.create_task(supervisor.supervise(engine, live, MainIO(), resume=resume))
    log.info("re-adopted sandbox", sandbox=sandbox.id)
    return True
