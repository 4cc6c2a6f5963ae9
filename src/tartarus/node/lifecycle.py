"""Pause, resume and graceful termination (Thanatos) of a sandbox this engine supervises.

Each step must keep four things in step: the runtime, the record, the guest agent's backstop
deadline and the supervisor's wall-clock timeout. `Engine.pause/resume/terminate` are thin
wrappers around the functions here.

* **pause** freezes every process (crun/runc: the cgroup freezer; gVisor: `runsc pause`),
  memory kept. The timeout stops counting: the record keeps `paused_at`, the supervisor waits
  without a deadline, and resume moves `expires_at` by the time spent paused. The guest
  agent's own deadline is switched off before the freeze, because the guest's clock runs on
  while it is frozen and the agent would kill everything the moment it thaws; resume sets it
  again. A paused sandbox ends like a running one (the runtime thaws it before deleting it).
* **terminate** sends SIGTERM to every process but the guest agent (the agent's `signal` op;
  an image without python3 gets SIGTERM on its busybox init, which ends the whole sandbox at
  once), waits up to the grace period, then kills. With a main command it waits for that
  command, as the sandbox's life is the command's; without one, for every signalled process.
  The final record (`final_outcome`): EXITED with the main command's exit code if it ended
  within the grace, else KILLED; the reason is `terminated: ended within grace` or
  `terminated: killed after the N s grace period`. A timeout or OOM kill during the grace
  is reported as such. Grace: the request's, else the template's `termination_grace_s`,
  else `Settings.termination_grace_s`.
* **terminate with checkpoint** first snapshots the sandbox (node/snapshots.py: its files,
  and its memory where the runtime can), so it can be started again later; a sandbox that
  cannot be snapshotted is refused (409) before any signal. The final reason names the
  snapshot: `terminated: ended within grace; saved as snapshot snap-…`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from tartarus.config import MAX_GRACE_S
from tartarus.errors import (
    AgentError,
    AgentTimeoutError,
    CapabilityError,
    ConflictError,
    InvalidRequestError,
    TartarusError,
)
from tartarus.models import IllegalTransition, Sandbox, SandboxState
from tartarus.node.agent_client import AgentClient
from tartarus.runtimes.base import ContainerStatus

if TYPE_CHECKING:
    from tartarus.node.engine import Engine
    from tartarus.node.live import LiveSandbox

log = structlog.get_logger("tartarus.lifecycle")

ENDED_WITHIN_GRACE = "terminated: ended within grace"
# the snapshot a terminate took first, by sandbox id, until the final record names it
_saved_as: dict[str, str] = {}
POLL_S = 0.05  # how often terminate looks whether everything has ended
AGENT_CALL_S = 5.0  # a live agent answers a signal request in milliseconds


def seconds_left(sandbox: Sandbox) -> float | None:
    """Until the wall-clock deadline; None while paused or hibernated (it does not count then)."""
    if sandbox.state in (SandboxState.PAUSED, SandboxState.HIBERNATED):
        return None
    expires = sandbox.expires_at or datetime.now(UTC)
    return (expires - datetime.now(UTC)).total_seconds()


def _expect(live: LiveSandbox, wanted: SandboxState) -> None:
    sid, state = live.sandbox.id, live.sandbox.state
    if live.killed.is_set() or live.done.is_set() or live.terminating:
        raise ConflictError(f"sandbox {sid} is ending")
    if state == wanted:
        return
    if state == SandboxState.HIBERNATED:
        raise ConflictError(f"sandbox {sid} is hibernated; wake it first")
    if state == SandboxState.PAUSED:
        raise ConflictError(f"sandbox {sid} is already paused")
    if wanted == SandboxState.PAUSED:
        raise ConflictError(f"sandbox {sid} is {state.value}, not paused")
    raise ConflictError(f"sandbox {sid} is {state.value}, not running")


async def pause(engine: Engine, live: LiveSandbox, agent_grace: float) -> Sandbox:
    sid = live.sandbox.id
    async with live.lifecycle_lock:
        _expect(live, SandboxState.RUNNING)
        if not (await engine.runtimes.capabilities(live.runtime.name)).pause:
            probe = await engine.runtimes.probe(live.runtime.name)
            why = probe.pause_error or "not on this host"
            raise CapabilityError(live.runtime.name, "pause", why)
        if live.has_agent:
            try:
                await asyncio.wait_for(live.client.set_deadline(None), AGENT_CALL_S)
            except TimeoutError:
                raise AgentTimeoutError(f"the guest agent of {sid} did not answer") from None
        try:
            await live.runtime.pause(sid)
            live.sandbox = engine.sandboxes.update(
                live.sandbox, state=SandboxState.PAUSED, paused_at=datetime.now(UTC)
            )
        except BaseException as exc:
            with contextlib.suppress(TartarusError):  # leave it running as it was
                if await live.runtime.status(sid) == ContainerStatus.PAUSED:
                    await live.runtime.resume(sid)
            await arm_backstop(live, agent_grace)
            if isinstance(exc, IllegalTransition) or live.killed.is_set() or live.done.is_set():
                raise ConflictError(f"sandbox {sid} ended while being paused") from None
            raise
        live.deadline_moved.set()  # the supervisor stops counting
        return live.sandbox


async def resume(engine: Engine, live: LiveSandbox, agent_grace: float) -> Sandbox:
    async with live.lifecycle_lock:
        _expect(live, SandboxState.PAUSED)
        return await _resume(engine, live, agent_grace)


async def _resume(engine: Engine, live: LiveSandbox, agent_grace: float) -> Sandbox:
    sandbox = live.sandbox
    await live.runtime.resume(sandbox.id)
    now = datetime.now(UTC)
    if sandbox.expires_at is not None and sandbox.paused_at is not None:
        left = max(sandbox.expires_at - sandbox.paused_at, timedelta(0))
    else:
        left = timedelta(seconds=sandbox.spec.timeout)
    try:
        live.sandbox = engine.sandboxes.update(
            sandbox, state=SandboxState.RUNNING, paused_at=None, expires_at=now + left
        )
    except IllegalTransition:
        raise ConflictError(f"sandbox {sandbox.id} ended while being resumed") from None
    live.deadline_moved.set()
    await arm_backstop(live, agent_grace)
    return live.sandbox


async def arm_backstop(live: LiveSandbox, agent_grace: float) -> None:
    """Give the guest agent its own deadline again, a little after the engine's."""
    expires = live.sandbox.expires_at
    if not live.has_agent or expires is None:
        return
    try:
        await asyncio.wait_for(
            live.client.set_deadline(expires.timestamp() + agent_grace), AGENT_CALL_S
        )
    except (AgentError, TimeoutError) as exc:  # the engine's own deadline still holds
        log.warning("could not set the guest deadline", sandbox=live.sandbox.id, error=str(exc))


async def readoptable_while_paused(engine: Engine, live: LiveSandbox) -> bool:
    """Whether a re-adopting engine can take over this paused sandbox. A frozen agent cannot
    answer a ping, but its socket must still be listening: on gVisor it is not (the relay
    died with the old engine), and such a sandbox is reaped like a running one would be."""
    with contextlib.suppress(TartarusError, OSError, ValueError):
        live.has_agent = engine.images.info(live.sandbox.image).python is not None
    if not live.has_agent:
        return True  # commands go through the runtime's exec
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(live.socket_path)), AGENT_CALL_S
        )
    except (OSError, TimeoutError):
        return False
    writer.close()  # the agent reads an empty request once it is thawed, and drops it
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def grace_for(engine: Engine, sandbox: Sandbox, requested: float | None) -> float:
    """The request's grace, else the template's, else the configured default."""
    if requested is not None:
        if not 0 <= requested <= MAX_GRACE_S:
            raise InvalidRequestError(f"grace must be 0 to {MAX_GRACE_S:g} seconds")
        return requested
    with contextlib.suppress(TartarusError):  # a template deleted since: the default
        template = engine.catalog.resolve(sandbox.spec.template).spec.termination_grace_s
        if template is not None:
            return template
    return engine.settings.termination_grace_s


async def terminate(
    engine: Engine,
    live: LiveSandbox,
    grace: float,
    agent_grace: float,
    *,
    saved_as: str | None = None,
) -> Sandbox:
    """SIGTERM, up to `grace` seconds to end, then kill; returns the final record, whose
    reason names `saved_as` (the snapshot taken first) if there is one."""
    async with live.lifecycle_lock:
        if live.done.is_set() or live.killed.is_set():
            await live.done.wait()
            return live.sandbox
        if saved_as is not None:
            _saved_as[live.sandbox.id] = saved_as
        if live.sandbox.state == SandboxState.HIBERNATED:
            from tartarus.node import hibernate  # it builds on this module

            await hibernate.wake_locked(engine, live)  # its processes get their grace too
        if live.sandbox.state == SandboxState.PAUSED:
            await _resume(engine, live, agent_grace)  # frozen processes cannot take SIGTERM
        live.terminating = True
        try:
            ended = await _signal_and_wait(live, grace)
            reason = ENDED_WITHIN_GRACE if ended else _killed_after(grace)
        except (AgentError, TimeoutError) as exc:
            reason = f"terminated: killed at once, the guest agent did not take SIGTERM ({exc})"
        if live.kill_reason is None:
            live.kill_reason = reason
        live.killed.set()  # a supervisor that already decided ignores it
        await live.done.wait()
        _saved_as.pop(live.sandbox.id, None)  # written by final_outcome, or never will be
        return live.sandbox


def _killed_after(grace: float) -> str:
    return f"terminated: killed after the {grace:g} s grace period"


async def _signal_and_wait(live: LiveSandbox, grace: float) -> bool:
    """Send SIGTERM; True if what we wait for ended within `grace` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    sid = live.sandbox.id
    if live.has_agent:
        await _signal_guest(live.client, signal.SIGTERM)
    else:
        await live.runtime.kill(sid, signal.SIGTERM)
    has_main = bool(live.sandbox.spec.command)
    while not live.done.is_set():
        if not has_main:
            if live.has_agent:
                if await _signal_guest(live.client, 0) == 0:
                    return True
            elif await live.runtime.status(sid) in (None, ContainerStatus.STOPPED):
                return True
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(live.done.wait(), min(remaining, POLL_S))
    return True


async def _signal_guest(client: AgentClient, sig: int) -> int:
    """The agent's `signal` op: how many of its processes (groups) were still there."""

    async def call() -> int:
        conn = await client._request({"op": "signal", "signal": sig})
        try:
            header, _ = await conn.recv()
            client._expect(header, "ok")
            return int(header.get("processes", 0))
        finally:
            await conn.close()

    return await asyncio.wait_for(call(), AGENT_CALL_S)


def final_outcome(
    live: LiveSandbox, state: SandboxState, exit_code: int | None, reason: str | None
) -> tuple[SandboxState, int | None, str | None]:
    """How a terminated sandbox's record ends (see the module docstring); others unchanged."""
    state, exit_code, reason = _final_outcome(live, state, exit_code, reason)
    if (snap := _saved_as.pop(live.sandbox.id, None)) is not None:
        reason = f"{reason or 'terminated'}; saved as snapshot {snap}"
    return state, exit_code, reason


def _final_outcome(
    live: LiveSandbox, state: SandboxState, exit_code: int | None, reason: str | None
) -> tuple[SandboxState, int | None, str | None]:
    if not live.terminating or state in (SandboxState.TIMED_OUT, SandboxState.OOM_KILLED):
        return state, exit_code, reason
    if state == SandboxState.KILLED:
        return state, exit_code, reason  # terminate's reason, or a user's kill during the grace
    if state == SandboxState.EXITED and live.has_agent:
        return state, exit_code, ENDED_WITHIN_GRACE
    if not live.has_agent:  # the busybox init ended on SIGTERM, taking everything with it
        return SandboxState.KILLED, None, ENDED_WITHIN_GRACE
    return state, exit_code, reason
