"""Audit routes (Hermes; role `admin`): read the hash-chained audit log and verify it.

Oldest first with a cursor (`after` = the last `seq` seen), so a client can page through or
tail it; `verify` recomputes the whole chain and names the first broken record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from tartarus.api.auth import Admin
from tartarus.api.context import Ctx
from tartarus.store.audit import AuditLog, AuditRecord

router = APIRouter(prefix="/v1/audit", tags=["audit"])

MAX_PAGE = 1000


class AuditOut(BaseModel):
    seq: int
    ts: datetime
    kind: str
    actor: str | None
    tenant: str | None
    sandbox_id: str | None
    data: dict[str, Any]
    hash: str

    @classmethod
    def of(cls, rec: AuditRecord) -> AuditOut:
        return cls(
            seq=rec.seq,
            ts=rec.ts,
            kind=rec.kind,
            actor=rec.actor,
            tenant=rec.tenant,
            sandbox_id=rec.sandbox_id,
            data=rec.data,
            hash=rec.hash,
        )


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_cursor: int | None  # pass as `after` for the next page


class AuditVerify(BaseModel):
    ok: bool
    broken_at: int | None  # seq of the first record whose chain does not hold


@router.get("", response_model=AuditPage)
async def list_audit(
    _: Admin,
    ctx: Ctx,
    tenant: Annotated[str | None, Query()] = None,
    kind: Annotated[str | None, Query(description="prefix, e.g. admission.")] = None,
    sandbox_id: Annotated[str | None, Query()] = None,
    after: Annotated[
        int, Query(ge=0, le=2**62, description="next_cursor of the previous page")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> AuditPage:
    found = AuditLog(ctx.engine.db).list(
        tenant=tenant, kind=kind, sandbox_id=sandbox_id, after=after, limit=limit + 1
    )
    page = found[:limit]
    return AuditPage(
        items=[AuditOut.of(r) for r in page],
        next_cursor=page[-1].seq if len(found) > limit else None,
    )


@router.get("/verify", response_model=AuditVerify)
async def verify_audit(_: Admin, ctx: Ctx) -> AuditVerify:
    broken = AuditLog(ctx.engine.db).verify()
    return AuditVerify(ok=broken is None, broken_at=broken)
