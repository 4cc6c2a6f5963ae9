"""Admin routes (role `admin`): tenants and API keys. A key's secret is shown once, here."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from tartarus.api.auth import Admin
from tartarus.api.context import Ctx
from tartarus.api.schemas import (
    CreateKey,
    CreateTenant,
    KeyList,
    KeyOut,
    NewKey,
    TenantList,
    TenantOut,
)
from tartarus.store.auth import ApiKey, Tenant

router = APIRouter(prefix="/v1", tags=["admin"])


def _tenant(t: Tenant) -> TenantOut:
    return TenantOut(name=t.name, created_at=t.created_at)


def _key(k: ApiKey) -> KeyOut:
    return KeyOut(
        id=k.id,
        tenant=k.tenant,
        role=k.role,
        name=k.name,
        created_at=k.created_at,
        revoked_at=k.revoked_at,
    )


@router.post("/tenants", status_code=201, response_model=TenantOut)
async def create_tenant(body: CreateTenant, _: Admin, ctx: Ctx) -> TenantOut:
    return _tenant(ctx.auth.create_tenant(body.name))


@router.get("/tenants", response_model=TenantList)
async def list_tenants(_: Admin, ctx: Ctx) -> TenantList:
    return TenantList(items=[_tenant(t) for t in ctx.auth.list_tenants()])


@router.post("/keys", status_code=201, response_model=NewKey)
async def create_key(body: CreateKey, _: Admin, ctx: Ctx) -> NewKey:
    record, secret = ctx.auth.create_key(body.tenant, body.role, body.name)
    return NewKey(**_key(record).model_dump(), key=secret)


@router.get("/keys", response_model=KeyList)
async def list_keys(_: Admin, ctx: Ctx, tenant: Annotated[str | None, Query()] = None) -> KeyList:
    return KeyList(items=[_key(k) for k in ctx.auth.list_keys(tenant)])


@router.delete("/keys/{key_id}", response_model=KeyOut)
async def revoke_key(key_id: str, _: Admin, ctx: Ctx) -> KeyOut:
    return _key(ctx.auth.revoke_key(key_id))
