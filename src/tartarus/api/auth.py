"""Cerberus at the door: who is calling (tenant, role) from the bearer key, on every request.

The key is checked against the store each time (no cache), so a revoked key stops working
with the next request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from tartarus.api.context import Ctx
from tartarus.api.errors import ApiError


@dataclass(frozen=True)
class Principal:
    tenant: str
    role: str
    key_id: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


async def principal(request: Request, ctx: Ctx) -> Principal:
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "malformed Authorization header: expected 'Bearer <key>'")
    key = ctx.auth.verify(token.strip())
    if key is None:
        raise ApiError(401, "invalid or revoked API key")
    return Principal(key.tenant, key.role, key.id)


async def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.is_admin:
        raise ApiError(403, "this needs an admin key")
    return who


Caller = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
