"""Hypnos: hibernate a sandbox to disk and wake it, by hand or after it sat idle.

Hibernating frees what a sleeping sandbox holds: its processes' memory goes to a checkpoint
image (`runsc checkpoint`, or CRIU through `runc checkpoint`), its writable layer (a tmpfs,
so memory too) is copied to disk beside it, then the container, its cgroups and both mounts
are released. The record, the supervisor task and `<sandbox dir>/hibernated/` stay: waking
mounts a fresh layer from the copy and restores the processes into it, exactly where they
were (a Python variable, an open file, a loop keep going). The wall-clock timeout does not
count while hibernated, as while paused (`paused_at` keeps when it stopped); the guest
agent's own deadline is off across it for the same reason as for pause.

Only a sandbox with nothing in flight is hibernated: a connection to the agent cannot cross a
checkpoint, so an open exec or stream makes it a conflict ("busy"), and so does a main
command that still runs (the supervisor holds a stream to it). Any later use wakes it first
(`LiveSandbox.waker`), so callers never see the difference but the latency. A kill removes
the image and the copy with the rest of the sandbox directory (`Engine._finish`).

Hibernating on its own after a while idle is node/idle.py's part.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from tartarus.errors import AgentError, CapabilityError, ConflictError, TartarusError
from tartarus.models import IllegalTransition, Sandbox, SandboxState
from tartarus.node import lifecycle, network, parking, sleepfiles
from tartarus.node.agent_client import AgentClient
from tartarus.node.live import USER_GID, USER_UID
from tartarus.node.overlay import Overlay
from tartarus.runtimes import reaper
from tartarus.runtimes.base import BindMount, ContainerConfig, ContainerStatus

if TYPE_CHECKING:
    from tartarus.node.engine import Engine
    from tartarus.node.live import LiveSandbox

log = structlog.get_logger("tartarus.hypnos")

AGENT_CALL_S = 5.0
BUSY_WAIT_S = 2.0  # how long a hibernation waits for open calls to end before refusing
PARKED = "parked"  # in the hibernated dir: the agent's abstract socket (node/parking.py)


def attach(engine: Engine, live: LiveSandbox) -> None:
    """Make every use of `live` from outside wake it first when it is hibernated."""

    async def waker() -> None:
        if live.sandbox.state == SandboxState.HIBERNATED or live.container_away:
            async with live.lifecycle_lock:
                if live.sandbox.state == SandboxState.HIBERNATED:
                    await wake_locked(engine, live)

    live.waker = waker


def readoptable(engine: Engine, live: LiveSandbox) -> bool:
    """Whether a re-adopting engine can take over this hibernated sandbox: nothing runs, but
    its image and layer copy must be on disk (else it is reaped like any other)."""
    saved = sleepfiles.hibernated_dir(live.directory)
    if not (saved / "image").is_dir() or not (saved / "upper").is_dir():
        return False
    try:
        live.has_agent = engine.images.info(live.sandbox.image).python is not None
    except (TartarusError, OSError, ValueError):
        return False  # its image is gone: it could not be restored
    live.container_away = True
    live.init_pid = None
    return True


async def _checkpoint_ok(engine: Engine, live: LiveSandbox) -> None:
    name = live.runtime.name
    if not (await engine.runtimes.capabilities(name)).checkpoint:
        probe = await engine.runtimes.probe(name)
        why = probe.checkpoint_error or probe.reason or "not on this host"
        raise CapabilityError(name, "checkpoint (hibernate)", why)


def refusal(live: LiveSandbox) -> str | None:
    """Why `live` cannot be hibernated in its present state, or None."""
    sandbox = live.sandbox
    sid = sandbox.id
    if live.killed.is_set() or live.done.is_set() or live.terminating:
        return f"sandbox {sid} is ending"
    if sandbox.state == SandboxState.HIBERNATED:
        return f"sandbox {sid} is already hibernated"
    if sandbox.state not in (SandboxState.RUNNING, SandboxState.PAUSED):
        return f"sandbox {sid} is {sandbox.state.value}, not running"
    if sandbox.pool is not None:
        return f"sandbox {sid} waits in a warm pool; pooled sandboxes do not hibernate"
    if sandbox.spec.command:
        return f"sandbox {sid} runs a main command; only sandboxes kept for exec hibernate"
    if not live.runtime.checkpoints_with_network and network.load(live.directory) is not None:
        return (
            f"sandbox {sid} cannot hibernate: {live.runtime.name} cannot checkpoint a sandbox"
            f" with network {sandbox.spec.network.value} (only with network none)"
        )
    return None


async def hibernate(engine: Engine, live: LiveSandbox) -> Sandbox:
    async with live.lifecycle_lock:
        if (why := refusal(live)) is not None:
            raise ConflictError(why)
        await _checkpoint_ok(engine, live)
        return await hibernate_locked(engine, live)


async def hibernate_locked(engine: Engine, live: LiveSandbox) -> Sandbox:
    sandbox, sid = live.sandbox, live.sandbox.id
    layer = sleepfiles.Layer(live.directory)
    if not layer.reachable():
        raise ConflictError(
            f"sandbox {sid} cannot be hibernated: its writable layer lives in the mount"
            " namespace of an engine process that has ended, and no keeper holds it"
        )
    if live.killed.is_set() or live.done.is_set():  # checked with no await before the flag:
        raise ConflictError(f"sandbox {sid} is ending")  # a kill waits only when it is set
    live.container_away = True  # new uses wait for the lock, then wake it (see `attach`)
    settle = time.monotonic() + BUSY_WAIT_S
    while live.in_use and time.monotonic() < settle:  # short ones (readiness pings) may end
        await asyncio.sleep(0.02)
    if live.in_use:
        live.container_away = False
        raise ConflictError(
            f"sandbox {sid} is busy ({live.in_use} exec or stream open); it hibernates when idle"
        )
    live.deadline_moved.set()  # no timeout halfway: the supervisor waits (container_away)
    t0 = time.perf_counter()
    paused = sandbox.state == SandboxState.PAUSED
    target = sleepfiles.hibernated_dir(live.directory)
    parked: str | None = None
    try:
        if live.has_agent and not paused:  # a paused agent's deadline is off already
            await _set_guest_deadline(live, None)
        if paused:
            await live.runtime.resume(sid)  # checkpointing thaws it anyway; keep it simple
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(mode=0o700)
        if live.has_agent and live.runtime.needs_agent_parking:
            parked = await parking.park(live)
            (target / PARKED).write_text(parked)
        await live.runtime.checkpoint(sid, target / "image")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        await _back_to_running(engine, live, paused, parked)
        raise
    # The processes now exist only in the image: from here on, failing means waking them.
    if live.init_pid is not None:
        await reaper.reap(live.init_pid, timeout=1.0)
        live.init_pid = None
    try:
        await layer.save(target / "upper")
        await layer.release()
        size = sleepfiles.disk_bytes(target)
        now = datetime.now(UTC)
        ms = round((time.perf_counter() - t0) * 1000, 2)
        live.sandbox = engine.sandboxes.update(
            sandbox,
            state=SandboxState.HIBERNATED,
            hibernated_at=now,
            paused_at=sandbox.paused_at or now,
            checkpoint_bytes=size,
            timings_ms={**sandbox.timings_ms, "hibernate": ms},
        )
    except BaseException as exc:
        if live.killed.is_set() or isinstance(exc, IllegalTransition):  # its end cleans up
            live.killed.set()
            raise ConflictError(f"sandbox {sid} ended while being hibernated") from None
        log.error("hibernation failed after the checkpoint", sandbox=sid, error=str(exc))
        if not await _rescue(engine, live, paused):
            live.kill_reason = f"hibernation failed and the sandbox could not be woken: {exc}"
            live.killed.set()
        raise
    engine._observe("hibernate", ms)
    live.deadline_moved.set()  # the supervisor stops counting
    return live.sandbox


async def _rescue(engine: Engine, live: LiveSandbox, paused: bool) -> bool:
    """Restore the processes just checkpointed into the layer, still mounted; True if that
    worked and the sandbox is as it was."""
    if not sleepfiles.Layer(live.directory).mounted():
        return False
    try:
        await _restore(engine, live)
    except (TartarusError, OSError) as exc:
        log.error(
            "could not restore after a failed hibernation", sandbox=live.sandbox.id, error=str(exc)
        )
        return False
    shutil.rmtree(sleepfiles.hibernated_dir(live.directory), ignore_errors=True)
    await _back_to_running(engine, live, paused)
    return True


async def _back_to_running(
    engine: Engine, live: LiveSandbox, paused: bool, parked: str | None = None
) -> None:
    """After a failed hibernation: the container runs again as before (paused if it was)."""
    live.container_away = False
    live.deadline_moved.set()  # the timeout counts again
    with contextlib.suppress(TartarusError, OSError):
        if parked is not None:
            await _unpark(live, parked)
        status = await live.runtime.status(live.sandbox.id)
        if paused and status == ContainerStatus.RUNNING:
            await live.runtime.pause(live.sandbox.id)
        elif not paused and live.has_agent:
            await lifecycle.arm_backstop(live, engine_agent_grace())


async def wake(engine: Engine, live: LiveSandbox) -> Sandbox:
    async with live.lifecycle_lock:
        if live.killed.is_set() or live.done.is_set():
            raise ConflictError(f"sandbox {live.sandbox.id} is ending")
        if live.sandbox.state != SandboxState.HIBERNATED:
            raise ConflictError(
                f"sandbox {live.sandbox.id} is {live.sandbox.state.value}, not hibernated"
            )
        return await wake_locked(engine, live)


async def wake_locked(engine: Engine, live: LiveSandbox) -> Sandbox:
    """Restore a hibernated sandbox; the caller holds its lifecycle lock."""
    sandbox, sid = live.sandbox, live.sandbox.id
    t0 = time.perf_counter()
    await _restore(engine, live)
    now = datetime.now(UTC)
    stopped = sandbox.paused_at or sandbox.hibernated_at or now
    left = max((sandbox.expires_at or now) - stopped, timedelta(0))
    ms = round((time.perf_counter() - t0) * 1000, 2)
    try:
        live.sandbox = engine.sandboxes.update(
            sandbox,
            state=SandboxState.RUNNING,
            paused_at=None,
            hibernated_at=None,
            checkpoint_bytes=None,
            expires_at=now + left,
            timings_ms={**sandbox.timings_ms, "wake": ms},
        )
    except IllegalTransition:  # ended meanwhile: its supervisor removes what we restored
        live.killed.set()
        raise ConflictError(f"sandbox {sid} ended while being woken") from None
    live.last_used = time.time()
    shutil.rmtree(sleepfiles.hibernated_dir(live.directory), ignore_errors=True)
    live.deadline_moved.set()
    await lifecycle.arm_backstop(live, engine_agent_grace())
    engine._observe("wake", ms)
    return live.sandbox


async def _restore(engine: Engine, live: LiveSandbox) -> None:
    """Mount the layer from its copy (unless still mounted) and restore the processes."""
    sandbox = live.sandbox
    saved = sleepfiles.hibernated_dir(live.directory)
    layer = sleepfiles.Layer(live.directory)
    info = engine.images.info(sandbox.image)
    # Styx: a sandbox with a network sleeps only on a runtime that can (a VM: `refusal`);
    # a netns that went with the engine holding it is made again here
    await engine.network.ensure(sandbox.id, live.directory)
    mounted_here = False
    if not layer.mounted():
        lowerdir = Overlay(live.directory).lowerdir(engine.images.rootfs(sandbox.image))
        await layer.load(saved / "upper", lowerdir, sandbox.resources)
        mounted_here = True
    listener = _listener(live)
    try:
        config = _config(engine, live, info.python, listener.fileno())
        live.init_pid = await live.runtime.restore(
            config, live.directory / "bundle", live.directory / "init.log", saved / "image"
        )
        if (saved / PARKED).exists():
            try:
                await parking.adopt(live, (saved / PARKED).read_text(), listener)
            except BaseException:
                await live.runtime.delete(live.sandbox.id)
                raise
    except BaseException:
        if mounted_here:
            layer.unmount()
        raise
    finally:
        listener.close()  # the sandbox (or its relay) holds its own copy
    live.container_away = False


def _listener(live: LiveSandbox) -> socket.socket:
    """A fresh listening socket at the agent's path (the last one died with the container)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            live.socket_path.unlink()
        listener.bind(str(live.socket_path))
        listener.listen(64)
    except BaseException:
        listener.close()
        raise
    return listener


async def _unpark(live: LiveSandbox, name: str) -> None:
    listener = _listener(live)
    try:
        await parking.adopt(live, name, listener)
    finally:
        listener.close()


def _config(engine: Engine, live: LiveSandbox, python: str | None, fd: int) -> ContainerConfig:
    """What `Runtime.restore` needs: the start's config as far as a restore looks at it (the
    bundle written at the start holds the rest)."""
    from tartarus.node import engine as engine_module  # the engine imports this module

    guest = engine_module.GUEST_MOUNT
    if python is not None:
        args = [python, "-I", "-S", f"{guest}/agent.py", "--fd", "3"]
    else:
        args = [f"{guest}/busybox", "sh"]
    assert engine._guest_dir is not None
    netns, net_binds, guest_net = engine.network.container_parts(live.directory)
    return ContainerConfig(
        id=live.sandbox.id,
        rootfs=sleepfiles.Layer(live.directory).rootfs,
        args=args,
        env=live.env,
        cwd=engine_module.HOME,
        resources=live.sandbox.resources,
        uid=USER_UID,
        gid=USER_GID,
        binds=[BindMount(engine._guest_dir, guest), *net_binds],
        pass_fds=[fd] if python is not None else [],
        netns=netns,
        network=guest_net,
    )


def engine_agent_grace() -> float:
    from tartarus.node import engine as engine_module

    return engine_module.AGENT_GRACE_S


async def _set_guest_deadline(live: LiveSandbox, deadline: float | None) -> None:
    """Internal calls bypass `live.client`: that one would wait for our own lock."""
    client = AgentClient(str(live.socket_path))
    try:
        await asyncio.wait_for(client.set_deadline(deadline), AGENT_CALL_S)
    except TimeoutError:
        raise AgentError(f"the guest agent of {live.sandbox.id} did not answer") from None


async def keep_layers(engine: Engine) -> None:
    """Before an engine leaves its sandboxes running: keep the layers of those that could be
    hibernated later reachable for the next engine (node/sleepfiles.py)."""
    keep = []
    for live in engine._live.values():
        if refusal(live) is not None or not sleepfiles.Layer(live.directory).mounted():
            continue
        with contextlib.suppress(TartarusError):
            if (await engine.runtimes.capabilities(live.runtime.name)).checkpoint:
                keep.append(live.directory)
    try:
        sleepfiles.keep(keep)
    except OSError as exc:
        log.warning("could not start a layer keeper", error=str(exc))
