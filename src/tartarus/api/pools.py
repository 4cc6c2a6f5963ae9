"""Warm pool routes (role `admin`): pools are a host-wide resource, not a tenant's."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tartarus.api.auth import Admin
from tartarus.api.context import Ctx
from tartarus.errors import InvalidRequestError
from tartarus.models.pool import MAX_POOL_SIZE, PoolSpec, PoolStatus

router = APIRouter(prefix="/v1", tags=["pools"])


class PoolSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: int = Field(ge=0, le=MAX_POOL_SIZE, description="ready sandboxes kept when idle")
    max: int | None = Field(None, ge=0, le=MAX_POOL_SIZE, description="grow up to; default min")
    runtime: str | None = Field(None, description="runtime of the pooled sandboxes")


class PoolList(BaseModel):
    items: list[PoolStatus]


@router.get("/pools", response_model=PoolList)
async def list_pools(_: Admin, ctx: Ctx) -> PoolList:
    return PoolList(items=ctx.engine.pools.status())


@router.get("/pools/{template}", response_model=PoolStatus)
async def get_pool(template: str, _: Admin, ctx: Ctx) -> PoolStatus:
    return ctx.engine.pools.get(template)


@router.put("/pools/{template}", response_model=PoolStatus)
async def set_pool(template: str, body: PoolSettings, _: Admin, ctx: Ctx) -> PoolStatus:
    """Create or change a template's pool; it fills in the background."""
    try:
        spec = PoolSpec(template=template, **body.model_dump())
    except ValidationError as exc:
        raise InvalidRequestError(_first_error(exc)) from exc
    return ctx.engine.pools.set(spec)


@router.delete("/pools/{template}", status_code=204)
async def delete_pool(template: str, _: Admin, ctx: Ctx) -> Response:
    """Remove a pool; its ready sandboxes are killed, handed-out ones are not touched."""
    ctx.engine.pools.remove(template)
    return Response(status_code=204)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return str(error["msg"]).removeprefix("Value error, ")
