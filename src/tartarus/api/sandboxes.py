"""Sandbox lifecycle routes: create, list, get, kill, set timeout, run code.

Every lookup passes the caller's tenant to the engine, which answers another tenant's sandbox
with NotFoundError: isolation is enforced in one place, not re-checked per route.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError

from tartarus.api.auth import Caller
from tartarus.api.context import Ctx
from tartarus.api.errors import ApiError, validation_message
from tartarus.api.schemas import (
    CodeErrorOut,
    CodeOut,
    CodeRequest,
    CreateSandbox,
    SandboxDetail,
    SandboxOut,
    SandboxPage,
    SetTimeout,
    StateFilter,
)
from tartarus.control import submit
from tartarus.errors import InvalidRequestError, NotFoundError
from tartarus.models import TERMINAL_STATES, Resources, Sandbox, SandboxSpec, SandboxState

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])

LIVE_STATES = [s for s in SandboxState if s not in TERMINAL_STATES]
MAX_PAGE = 1000


async def owned_sandbox(sandbox_id: str, who: Caller, ctx: Ctx) -> Sandbox:
    """The caller's sandbox, or 404 (also for another tenant's): resolved before any work."""
    return ctx.engine.get(sandbox_id, tenant=who.tenant)


async def running_sandbox(sandbox: Annotated[Sandbox, Depends(owned_sandbox)]) -> Sandbox:
    # a hibernated sandbox counts as running: the engine wakes it on use (node/hibernate.py)
    if sandbox.state not in (SandboxState.RUNNING, SandboxState.HIBERNATED):
        raise ApiError(409, f"sandbox {sandbox.id} is {sandbox.state.value}, not running")
    return sandbox


Owned = Annotated[Sandbox, Depends(owned_sandbox)]
Running = Annotated[Sandbox, Depends(running_sandbox)]


def _spec(body: CreateSandbox, ctx: Ctx, tenant: str | None) -> SandboxSpec:
    name = body.template
    if body.snapshot is not None and "template" not in body.model_fields_set:
        name = ctx.engine.snapshots.get(body.snapshot, tenant=tenant).template  # else 404
    try:
        template = ctx.engine.catalog.resolve(name)
    except NotFoundError as exc:
        raise InvalidRequestError(str(exc)) from None  # a bad input, not a missing resource
    overrides = {
        "cpu": body.cpu,
        "memory_mb": body.memory_mb,
        "pids": body.pids,
        "disk_mb": body.disk_mb,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        resources = Resources.model_validate({**template.spec.resources.model_dump(), **given})
        return SandboxSpec(
            template=name,
            command=tuple(body.command),
            env=body.env,
            workdir=body.workdir,
            resources=resources,
            timeout=body.timeout,
            runtime=body.runtime,
            metadata=body.metadata,
            snapshot=body.snapshot,
            seccomp=body.seccomp,
            network=body.network,
            egress=tuple(body.egress),
        )
    except ValidationError as exc:
        raise ApiError(422, validation_message(exc.errors())) from None


@router.post("", status_code=201, response_model=SandboxOut)
async def create_sandbox(
    body: CreateSandbox, who: Caller, ctx: Ctx, request: Request
) -> SandboxOut:
    received = getattr(request.state, "received", None)
    spec = _spec(body, ctx, who.tenant)
    sandbox = await submit.create(
        ctx.engine, spec, tenant=who.tenant, actor=who.key_id, received=received
    )
    return SandboxOut.of(sandbox)


def _metadata_filter(items: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise ApiError(422, f"invalid metadata: {item!r} is not key:value")
        found[key] = value
    return found


@router.get("", response_model=SandboxPage)
async def list_sandboxes(
    who: Caller,
    ctx: Ctx,
    state: Annotated[list[StateFilter] | None, Query()] = None,
    metadata: Annotated[list[str] | None, Query(description="key:value")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> SandboxPage:
    if not state:
        states: list[SandboxState] | None = LIVE_STATES
    elif StateFilter.ALL in state:
        states = None
    else:
        states = [SandboxState(s.value) for s in state]
    found = ctx.engine.list(
        tenant=who.tenant,
        states=states,
        metadata=_metadata_filter(metadata or []),
        limit=limit + 1,
        before=cursor,
    )
    page = found[:limit]
    next_cursor = page[-1].id if len(found) > limit else None
    return SandboxPage(items=[SandboxOut.of(s) for s in page], next_cursor=next_cursor)


@router.get("/{sandbox_id}", response_model=SandboxDetail)
async def get_sandbox(sandbox: Owned, ctx: Ctx) -> SandboxDetail:
    return SandboxDetail.with_events(sandbox, ctx.engine.events(sandbox.id))


@router.delete("/{sandbox_id}", response_model=SandboxOut)
async def kill_sandbox(sandbox: Owned, who: Caller, ctx: Ctx) -> SandboxOut:
    return SandboxOut.of(await ctx.engine.kill(sandbox.id, tenant=who.tenant))


@router.post("/{sandbox_id}/timeout", response_model=SandboxOut)
async def set_timeout(body: SetTimeout, sandbox: Running, who: Caller, ctx: Ctx) -> SandboxOut:
    return SandboxOut.of(await ctx.engine.set_timeout(sandbox.id, body.timeout, tenant=who.tenant))


@router.post("/{sandbox_id}/code", response_model=CodeOut)
async def run_code(body: CodeRequest, sandbox: Running, who: Caller, ctx: Ctx) -> CodeOut:
    agent = ctx.engine.agent(sandbox.id, tenant=who.tenant)
    result = await agent.run_code(body.code, context=body.context, timeout=body.timeout)
    error = None
    if result.error is not None:
        error = CodeErrorOut(
            name=result.error.name, value=result.error.value, traceback=result.error.traceback
        )
    return CodeOut(stdout=result.stdout, stderr=result.stderr, value=result.value, error=error)
