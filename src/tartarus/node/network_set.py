"""Changing a running sandbox's network (Styx): `tartarus network set`, `PUT .../network`.

The new mode and rules replace the sandbox's nftables rules and its resolver's allowed names
at once (node/network.py); connections already open stay open, new ones follow the new rules,
and addresses resolved for a name that is no longer allowed stop working. The record's spec
is updated so `inspect` shows what is in force, and the change is a sandbox event and an
audit record (`network.set`) in one transaction.

Only `allowlist` <-> `open` and new rules are possible: a sandbox created with `none` has no
network namespace of ours to change (the runtime made a private one, and a running process
cannot be moved into another), and one cannot be taken back to `none` while it lives (its
veth would have to go from under it); both are a 409 with the way out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tartarus.models import NetworkMode, Sandbox
from tartarus.store import audit
from tartarus.store.sandboxes import add_event

if TYPE_CHECKING:
    from tartarus.node.engine import Engine


async def set_network(
    engine: Engine,
    sandbox_id: str,
    mode: NetworkMode,
    egress: tuple[str, ...],
    *,
    tenant: str | None = None,
    actor: str | None = None,
) -> Sandbox:
    live = engine._get_live(sandbox_id, tenant, paused_ok=True)
    async with live.lifecycle_lock:  # not halfway through a hibernation or a wake
        await engine.network.set_rules(sandbox_id, live.directory, mode, egress)
        spec = live.sandbox.spec.model_copy(update={"network": mode, "egress": egress})
        live.sandbox = engine.sandboxes.update(live.sandbox, spec=spec)
    data = {"mode": mode.value, "egress": list(egress)}
    with engine.db.begin() as conn:
        add_event(conn, sandbox_id, "network.set", data)
        audit.append(
            conn,
            "network.set",
            data,
            actor=actor,
            tenant=live.sandbox.tenant,
            sandbox_id=sandbox_id,
        )
    return live.sandbox
