"""Styx's route: change a running sandbox's network mode and egress rules.

`PUT /v1/sandboxes/{id}/network` replaces the mode (`allowlist` <-> `open`) and the rules at
once (node/network_set.py): new connections follow them, and the change is a sandbox event
and an audit record with the caller's key as its actor. The tenant's policy is asked first
(control/permissions.py: modes and egress as at create; a quarantined sandbox stays cut off):
a refusal is a 403. A sandbox created with network
`none`, or a change to `none`, is a 409 that says why.
"""

from __future__ import annotations

from fastapi import APIRouter

from tartarus.api.auth import Caller
from tartarus.api.context import Ctx
from tartarus.api.sandboxes import Running
from tartarus.api.schemas import SandboxOut, SetNetwork
from tartarus.control import permissions
from tartarus.node.network_set import set_network

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])


@router.put("/{sandbox_id}/network", response_model=SandboxOut)
async def put_network(body: SetNetwork, sandbox: Running, who: Caller, ctx: Ctx) -> SandboxOut:
    egress = tuple(body.egress)
    permissions.require_network(ctx.engine, sandbox, body.mode, egress, actor=who.key_id)
    changed = await set_network(
        ctx.engine,
        sandbox.id,
        body.mode,
        egress,
        tenant=who.tenant,
        actor=who.key_id,
    )
    return SandboxOut.of(changed)
