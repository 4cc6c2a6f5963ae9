"""The supervisor of one running sandbox, and the one place a sandbox ends.

`supervise` is the task the engine starts for every running sandbox: it runs the main command
(if any), then waits for the first of its end, a kill, the wall-clock deadline (which pause
and hibernation move) and the container stopping on its own, and decides how it ended: exit
code, OOM kill (read from the memory cgroup before it is deleted), timeout, kill, failure.
Every path, failed starts included, ends in `finish`, which releases the container, the
network, the mounts, the cgroups and the socket before the final state is written, so a
record that says "ended" never hides a live resource.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from tartarus.errors import AgentError
from tartarus.models import ExecResult, SandboxState
from tartarus.node import hibernate, lifecycle
from tartarus.node.logs import OutputLog
from tartarus.node.overlay import Overlay
from tartarus.runtimes import cgroups, reaper
from tartarus.runtimes.base import ContainerStatus
from tartarus.runtimes.bundle import CGROUP_PARENT

if TYPE_CHECKING:
    from tartarus.node.engine import Engine
    from tartarus.node.live import LiveSandbox, MainIO

log = structlog.get_logger("tartarus.engine")

WATCH_INTERVAL_S = 1.0


async def supervise(engine: Engine, live: LiveSandbox, io: MainIO, *, resume: bool = False) -> None:
    """Run the main command (if any), wait for the first of: its end, a kill, the deadline,
    the container stopping; then decide how it ended and release everything."""
    spec = live.sandbox.spec
    hibernate.attach(engine, live)  # uses wake it when hibernated
    waiters: set[asyncio.Future[Any]] = set()
    main: asyncio.Task[ExecResult] | None = None
    killed = asyncio.ensure_future(live.killed.wait())
    waiters.add(killed)
    if spec.command:
        live.output = OutputLog(engine.settings.logs_dir / f"{live.sandbox.id}.jsonl")
        main = asyncio.create_task(
            live.run_main(
                list(spec.command),
                env=live.env,
                cwd=live.workdir,
                stdin=io.stdin,
                on_stdout=io.on_stdout,
                on_stderr=io.on_stderr,
                resume=resume,
            )
        )
        waiters.add(main)
    watch = asyncio.create_task(_watch_container(live))
    waiters.add(watch)
    try:
        while True:
            moved = asyncio.ensure_future(live.deadline_moved.wait())
            remaining = lifecycle.seconds_left(live.sandbox)  # None while paused
            if live.container_away:  # being hibernated or woken, or hibernated
                remaining = None
            done, _ = await asyncio.wait(
                waiters | {moved},
                timeout=None if remaining is None else max(remaining, 0),
                return_when=asyncio.FIRST_COMPLETED,
            )
            moved.cancel()
            if done == {moved}:
                live.deadline_moved.clear()
                continue
            done.discard(moved)
            break
        state, exit_code, reason = await _outcome(live, done, main, killed)
        state, exit_code, reason = lifecycle.final_outcome(live, state, exit_code, reason)
    except BaseException as exc:
        state, exit_code, reason = SandboxState.FAILED, None, f"supervisor error: {exc!r}"
        raise
    finally:
        for w in waiters:
            w.cancel()
        if not live.detached:
            await finish(engine, live, state, exit_code=exit_code, reason=reason)


async def _outcome(
    live: LiveSandbox,
    done: set[asyncio.Future[Any]],
    main: asyncio.Task[ExecResult] | None,
    killed: asyncio.Future[Any],
) -> tuple[SandboxState, int | None, str | None]:
    sid = live.sandbox.id
    if killed in done:
        return SandboxState.KILLED, None, live.kill_reason
    if not done:
        return SandboxState.TIMED_OUT, None, "wall-clock timeout reached"
    if cgroups.oom_kills(CGROUP_PARENT, sid) > 0:
        return SandboxState.OOM_KILLED, 137, "memory"
    if main is not None and main in done:
        try:
            result = main.result()
        except AgentError as exc:
            return SandboxState.FAILED, None, f"guest agent failed: {exc}"
        if result.error:
            return SandboxState.FAILED, result.exit_code, result.error
        return SandboxState.EXITED, result.exit_code, None
    left = lifecycle.seconds_left(live.sandbox)
    if left is not None and left <= 0:  # the guest's own backstop ended it, past the deadline
        return SandboxState.TIMED_OUT, None, "wall-clock timeout reached"
    return SandboxState.FAILED, None, "sandbox init exited unexpectedly"


async def _watch_container(live: LiveSandbox) -> None:
    """Return when the container stops on its own (its agent died or was killed)."""
    while True:
        await asyncio.sleep(WATCH_INTERVAL_S)
        status = await live.runtime.status(live.sandbox.id)
        if status in (None, ContainerStatus.STOPPED) and not live.container_away:
            return


async def finish(
    engine: Engine,
    live: LiveSandbox,
    state: SandboxState,
    *,
    exit_code: int | None = None,
    reason: str | None = None,
) -> None:
    """Release everything, then record the final state. Safe to call on partial starts,
    and it always marks the sandbox done, whatever fails on the way."""
    sid = live.sandbox.id
    errors: list[str] = []
    try:
        try:
            await live.runtime.delete(sid)
        except Exception as exc:
            errors.append(f"delete: {exc}")
        if live.init_pid is not None and not await reaper.reap(live.init_pid):
            errors.append(f"init process {live.init_pid} did not exit")
        errors += await engine.network.detach(sid, live.directory)
        try:
            Overlay(live.directory).remove()
        except OSError as exc:
            errors.append(f"overlay: {exc}")
        if survivors := await cgroups.drain(CGROUP_PARENT, sid):
            errors.append(f"processes survived the kill: {sorted(survivors)}")
        cgroups.remove(CGROUP_PARENT, sid)
        try:
            live.sandbox = engine.sandboxes.update(
                live.sandbox,
                release=True,
                state=state,
                exit_code=exit_code,
                reason=reason,
                finished_at=datetime.now(UTC),
                timings_ms=engine._timings(live),
            )
        except Exception as exc:  # the store may be gone; the sandbox is released anyway
            errors.append(f"record: {exc}")
            live.sandbox = live.sandbox.model_copy(
                update={"state": state, "exit_code": exit_code, "reason": reason}
            )
    finally:
        if errors:
            log.error("cleanup incomplete", sandbox=sid, errors=errors)
        engine._live.pop(sid, None)
        engine.erinyes.unwatch(sid)
        engine._clocks.pop(sid, None)
        engine._late.pop(sid, None)
        live.done.set()
