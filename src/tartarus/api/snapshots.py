"""Snapshot routes (Nyx): take one of a sandbox, list and delete a tenant's snapshots.

A snapshot holds the sandbox's files (its writable layer), and with `"memory": true` its
processes too, where its runtime can checkpoint here (409 elsewhere); `POST /v1/sandboxes`
with `"snapshot"` starts new sandboxes from it (node/snapshots.py). Another tenant's
snapshot is as unknown as a missing one (404); a snapshot that a live sandbox or another
snapshot still stands on cannot be deleted (409).
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from tartarus.api.auth import Caller
from tartarus.api.context import Ctx
from tartarus.api.sandboxes import Owned
from tartarus.control import permissions
from tartarus.models import Resources
from tartarus.node import snapshots
from tartarus.store.snapshots import NAME_PATTERN, Snapshot

router = APIRouter(tags=["snapshots"])


class TakeSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None, pattern=NAME_PATTERN, description="unique within the tenant; usable instead of id"
    )
    memory: bool = Field(
        False,
        description="save its processes too (runtimes that checkpoint: gvisor, runc with"
        " CRIU); it is hibernated and woken for that, and must be idle",
    )


class SnapshotOut(BaseModel):
    id: str
    name: str | None
    template: str
    image: str = Field(description="content hash of the template image it was taken on")
    runtime: str = Field(
        description="of the source sandbox; clones may use any runtime (of a memory snapshot:"
        " this one)"
    )
    resources: Resources
    source: str = Field(description="the sandbox it was taken from")
    parent: str | None = Field(description="the snapshot the source was started from")
    size_bytes: int = Field(description="bytes on disk")
    memory: bool = Field(description="whether its processes and memory are in it")
    created_at: datetime

    @classmethod
    def of(cls, snap: Snapshot) -> SnapshotOut:
        return cls.model_validate(snap.model_dump(exclude={"tenant"}))


class SnapshotList(BaseModel):
    items: list[SnapshotOut]


@router.post("/v1/sandboxes/{sandbox_id}/snapshot", status_code=201, response_model=SnapshotOut)
async def snapshot_sandbox(
    sandbox: Owned, who: Caller, ctx: Ctx, body: TakeSnapshot | None = None
) -> SnapshotOut:
    """Save the sandbox's files as a snapshot (paused while they are copied, then resumed;
    a paused one stays paused), and with `memory` its processes. 409 if it has ended, the
    name is taken, or (memory) its runtime cannot checkpoint here or it is busy."""
    name = body.name if body is not None else None
    memory = body.memory if body is not None else False
    permissions.require(ctx.engine, sandbox, "snapshot", actor=who.key_id)  # Themis: 403
    snap = await ctx.engine.snapshot(sandbox.id, name=name, tenant=who.tenant, memory=memory)
    return SnapshotOut.of(snap)


@router.get("/v1/snapshots", response_model=SnapshotList)
async def list_snapshots(who: Caller, ctx: Ctx) -> SnapshotList:
    """The tenant's snapshots, oldest first."""
    return SnapshotList(
        items=[SnapshotOut.of(s) for s in ctx.engine.snapshots.list(tenant=who.tenant)]
    )


@router.get("/v1/snapshots/{snapshot_id}", response_model=SnapshotOut)
async def get_snapshot(snapshot_id: str, who: Caller, ctx: Ctx) -> SnapshotOut:
    """One snapshot, by id or name."""
    return SnapshotOut.of(ctx.engine.snapshots.get(snapshot_id, tenant=who.tenant))


@router.delete("/v1/snapshots/{snapshot_id}", response_model=SnapshotOut)
async def delete_snapshot(snapshot_id: str, who: Caller, ctx: Ctx) -> SnapshotOut:
    """Delete a snapshot's record and files; answers what was deleted. 409 while a live
    sandbox was started from it or another snapshot lies over it."""
    return SnapshotOut.of(snapshots.delete(ctx.engine, snapshot_id, tenant=who.tenant))
