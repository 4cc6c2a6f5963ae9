"""Policy routes (Themis; role `admin`): list, read (any version), apply, delete.

`PUT /v1/policies/{name}` applies the body as the next version of that name (the name in
the path wins; a `version` in the body is ignored, the store assigns it). Every apply and
delete is an audit record with the admin key as its actor.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, ValidationError

from tartarus.api.auth import Admin
from tartarus.api.context import Ctx
from tartarus.api.errors import ApiError, validation_message
from tartarus.control.admission import for_engine
from tartarus.models.policy import EffectivePolicy, Policy

router = APIRouter(prefix="/v1/policies", tags=["policies"])


class PolicyList(BaseModel):
    items: list[Policy]


@router.get("", response_model=PolicyList)
async def list_policies(_: Admin, ctx: Ctx) -> PolicyList:
    """The version in force of every policy."""
    return PolicyList(items=for_engine(ctx.engine).policies.list())


@router.get("/effective", response_model=EffectivePolicy)
async def effective_policy(
    _: Admin,
    ctx: Ctx,
    template: Annotated[str, Query()] = "python",
    tenant: Annotated[str | None, Query()] = None,
) -> EffectivePolicy:
    """What a create by `tenant` of `template` is judged by: every matching policy combined."""
    return for_engine(ctx.engine).policy_for(tenant, template)


@router.get("/{name}/versions", response_model=PolicyList)
async def policy_versions(name: str, _: Admin, ctx: Ctx) -> PolicyList:
    return PolicyList(items=for_engine(ctx.engine).policies.versions(name))


@router.get("/{name}", response_model=Policy)
async def get_policy(
    name: str, _: Admin, ctx: Ctx, version: Annotated[int | None, Query(ge=1, le=2**31)] = None
) -> Policy:
    return for_engine(ctx.engine).policies.get(name, version=version)


@router.put("/{name}", response_model=Policy)
async def put_policy(
    name: str, who: Admin, ctx: Ctx, body: Annotated[dict[str, Any], Body()]
) -> Policy:
    """Apply a policy: it becomes version n+1 of `name` and is in force at once."""
    try:
        policy = Policy.model_validate({**body, "name": name, "version": 0})
    except ValidationError as exc:
        raise ApiError(422, validation_message(exc.errors())) from None
    return for_engine(ctx.engine).policies.apply(policy, actor=who.key_id)


@router.delete("/{name}", response_model=Policy)
async def delete_policy(name: str, who: Admin, ctx: Ctx) -> Policy:
    """Remove every version; returns the one that was in force (the audit log keeps it)."""
    return for_engine(ctx.engine).policies.delete(name, actor=who.key_id)
