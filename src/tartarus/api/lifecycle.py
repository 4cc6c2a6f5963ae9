"""Lifecycle routes beyond create and kill: pause, resume, hibernate, wake, graceful terminate,
and the runtimes' capabilities on this host (which of those actions each runtime allows).

State and capability refusals come from the engine as ConflictError/CapabilityError and are
answered 409 with the engine's message ("sandbox X is paused; resume it first",
"runtime 'crun' does not support checkpoint (hibernate): ...").
"""

from __future__ import annotations

from fastapi import APIRouter

from tartarus.api.auth import Caller
from tartarus.api.context import Ctx
from tartarus.api.sandboxes import Owned
from tartarus.api.schemas import (
    RuntimeCapabilities,
    RuntimeList,
    RuntimeOut,
    SandboxOut,
    Terminate,
)
from tartarus.control import permissions

router = APIRouter(tags=["lifecycle"])


@router.post("/v1/sandboxes/{sandbox_id}/pause", response_model=SandboxOut)
async def pause_sandbox(sandbox: Owned, who: Caller, ctx: Ctx) -> SandboxOut:
    """Freeze every process of a running sandbox, memory kept; its timeout stops counting."""
    return SandboxOut.of(await ctx.engine.pause(sandbox.id, tenant=who.tenant))


@router.post("/v1/sandboxes/{sandbox_id}/resume", response_model=SandboxOut)
async def resume_sandbox(sandbox: Owned, who: Caller, ctx: Ctx) -> SandboxOut:
    """Thaw a paused sandbox; its deadline moves by the time it spent paused."""
    return SandboxOut.of(await ctx.engine.resume(sandbox.id, tenant=who.tenant))


@router.post("/v1/sandboxes/{sandbox_id}/hibernate", response_model=SandboxOut)
async def hibernate_sandbox(sandbox: Owned, who: Caller, ctx: Ctx) -> SandboxOut:
    """Save a running (or paused) sandbox's memory and files to disk and free its memory and
    processes; its timeout stops counting. Any later use wakes it. `checkpoint_bytes` is
    what it takes on disk. 409 if its runtime cannot checkpoint here or it is busy."""
    permissions.require(ctx.engine, sandbox, "hibernate", actor=who.key_id)  # Themis: 403
    return SandboxOut.of(await ctx.engine.hibernate(sandbox.id, tenant=who.tenant))


@router.post("/v1/sandboxes/{sandbox_id}/wake", response_model=SandboxOut)
async def wake_sandbox(sandbox: Owned, who: Caller, ctx: Ctx) -> SandboxOut:
    """Restore a hibernated sandbox exactly as it was; its deadline moves by the time it
    slept. Exec, files and code do this by themselves."""
    return SandboxOut.of(await ctx.engine.wake(sandbox.id, tenant=who.tenant))


@router.post("/v1/sandboxes/{sandbox_id}/terminate", response_model=SandboxOut)
async def terminate_sandbox(
    sandbox: Owned, who: Caller, ctx: Ctx, body: Terminate | None = None
) -> SandboxOut:
    """SIGTERM every process, wait up to the grace period, then kill; answers the final
    record (its reason says whether it ended within the grace). Idempotent on an ended one.
    With `checkpoint`, a snapshot is taken first and the reason names it (409 if it cannot
    be taken, or the sandbox has ended)."""
    grace = body.grace if body is not None else None
    checkpoint = body.checkpoint if body is not None else False
    ended = await ctx.engine.terminate(
        sandbox.id, tenant=who.tenant, grace=grace, checkpoint=checkpoint
    )
    return SandboxOut.of(ended)


@router.get("/v1/runtimes", response_model=RuntimeList)
async def list_runtimes(who: Caller, ctx: Ctx) -> RuntimeList:
    """Each runtime as probed on this host: whether it works, and what it can do here."""
    reports = await ctx.engine.runtimes.report(default=ctx.settings.default_runtime)
    items = []
    for report in reports:
        caps = report.capabilities
        items.append(
            RuntimeOut(
                name=report.name,
                available=report.probe.works,
                default=report.default,
                version=report.probe.version,
                reason=report.probe.reason or None,
                hint=report.probe.hint or None,
                detail=report.probe.detail or None,
                capabilities=RuntimeCapabilities(
                    pause=caps.pause,
                    checkpoint=caps.checkpoint,
                    userns=caps.userns,
                    network_modes=list(caps.network_modes),
                    exec_channel=caps.exec_channel,
                    missing=report.missing,
                ),
            )
        )
    return RuntimeList(items=items)
