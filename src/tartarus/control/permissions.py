"""Themis on actions other than create: may this sandbox be hibernated or snapshotted, or
its network changed while it runs?

Checked when a caller asks (the API routes); a refusal is an `AdmissionDenied` (HTTP 403)
and an audit record. The idle monitor's own hibernation is resource management
by the node and is not asked (the node cannot see policies); a policy that must keep a
sandbox's memory off disk therefore also needs TARTARUS_IDLE_HIBERNATE_S=0 for now.
"""

from __future__ import annotations

from typing import NoReturn

from tartarus.control.admission import for_engine
from tartarus.errors import AdmissionDenied
from tartarus.models import NetworkMode, Sandbox
from tartarus.models.policy import covers
from tartarus.node.engine import Engine
from tartarus.store.audit import AuditLog

JUDGE = "Themis"


def require(engine: Engine, sandbox: Sandbox, action: str, *, actor: str | None) -> None:
    """Raise AdmissionDenied if the sandbox's effective policy forbids `action`
    ("hibernate" or "snapshot")."""
    policy = for_engine(engine).policy_for(sandbox.tenant, sandbox.spec.template)
    allowed = policy.allow_hibernate if action == "hibernate" else policy.allow_snapshot
    if allowed:
        return
    reason = f"{action} is not allowed for this sandbox (policy {', '.join(policy.sources)})"
    _deny(engine, sandbox, JUDGE, action, reason, actor)


def require_network(
    engine: Engine,
    sandbox: Sandbox,
    mode: NetworkMode,
    egress: tuple[str, ...],
    *,
    actor: str | None,
) -> None:
    """Raise AdmissionDenied unless a running sandbox may switch to `mode` with `egress`:
    a quarantined one never leaves `none`; others stay within their policy (as at create)."""
    if sandbox.spec.quarantine is not None and mode != NetworkMode.NONE:
        reason = f"the sandbox is quarantined ({sandbox.spec.quarantine}): no network"
        _deny(engine, sandbox, "Typhon", "network", reason, actor)
    policy = for_engine(engine).policy_for(sandbox.tenant, sandbox.spec.template)
    if policy.network_modes is not None and mode not in policy.network_modes:
        reason = f"network mode {mode.value!r} is not allowed ({', '.join(policy.sources)})"
        _deny(engine, sandbox, "Styx", "network", reason, actor)
    if policy.egress is not None:
        outside = [rule for rule in egress if not covers(policy.egress, rule)]
        if mode == NetworkMode.OPEN or outside:
            what = "network 'open'" if mode == NetworkMode.OPEN else ", ".join(outside)
            reason = f"egress outside the policy's allowlist: {what}"
            _deny(engine, sandbox, "Styx", "network", reason, actor)


def _deny(
    engine: Engine, sandbox: Sandbox, judge: str, action: str, reason: str, actor: str | None
) -> NoReturn:
    AuditLog(engine.db).append(
        "admission.reject",
        {"outcome": "reject", "judge": judge, "action": action, "reason": reason},
        actor=actor,
        tenant=sandbox.tenant,
        sandbox_id=sandbox.id,
    )
    raise AdmissionDenied(judge, reason)
