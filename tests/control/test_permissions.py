"""Themis after create: hibernate, snapshot and network changes against the sandbox's
effective policy, each refusal an audit record."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tartarus.control import permissions
from tartarus.control.admission import for_engine
from tartarus.errors import AdmissionDenied
from tartarus.models import NetworkMode, Resources, Sandbox, SandboxSpec
from tartarus.models.policy import Policy
from tartarus.node.engine import Engine
from tartarus.store.audit import AuditLog


@pytest.fixture
def policies(engine: Engine) -> Iterator[None]:
    yield
    repo = for_engine(engine).policies
    for p in repo.list():
        repo.delete(p.name)


def _sandbox(tenant: str, **spec: object) -> Sandbox:
    return Sandbox(
        id=f"sb-{tenant}",
        tenant=tenant,
        spec=SandboxSpec.model_validate(spec),
        runtime="crun",
        image="x",
        resources=Resources(),
        created_at=datetime.now(UTC),
    )


def test_hibernate_and_snapshot(engine: Engine, policies: None) -> None:
    sandbox = _sandbox("p1")
    permissions.require(engine, sandbox, "hibernate", actor="k")  # no policy: allowed
    for_engine(engine).policies.apply(Policy(name="no", tenant="p1", allow_snapshot=False))
    permissions.require(engine, sandbox, "hibernate", actor="k")
    with pytest.raises(AdmissionDenied) as err:
        permissions.require(engine, sandbox, "snapshot", actor="k")
    assert (
        str(err.value) == "denied by Themis: snapshot is not allowed for this sandbox (policy no@1)"
    )
    record = AuditLog(engine.db).list(sandbox_id=sandbox.id)[-1]
    assert (record.kind, record.data["action"], record.actor) == (
        "admission.reject",
        "snapshot",
        "k",
    )
    permissions.require(engine, _sandbox("p2"), "snapshot", actor="k")  # another tenant


def test_network_changes(engine: Engine, policies: None) -> None:
    quarantined = _sandbox("p3", quarantine="Typhon: metadata untrusted=true")
    with pytest.raises(AdmissionDenied, match="denied by Typhon: the sandbox is quarantined"):
        permissions.require_network(engine, quarantined, NetworkMode.OPEN, (), actor="k")
    permissions.require_network(engine, quarantined, NetworkMode.NONE, (), actor="k")
    for_engine(engine).policies.apply(
        Policy.model_validate(
            {"name": "net", "tenant": "p4", "network": {"egress": ["*.example.org"]}}
        )
    )
    sandbox = _sandbox("p4")
    allow = NetworkMode.ALLOWLIST
    permissions.require_network(engine, sandbox, allow, ("a.example.org",), actor="k")
    with pytest.raises(AdmissionDenied, match=r"denied by Styx: .*: 192\.0\.2\.1"):
        permissions.require_network(engine, sandbox, allow, ("192.0.2.1",), actor="k")
    with pytest.raises(AdmissionDenied, match="network 'open'"):
        permissions.require_network(engine, sandbox, NetworkMode.OPEN, (), actor="k")


def test_the_engine_asks_policy_before_hibernating_on_its_own(
    engine: Engine, policies: None
) -> None:
    """Idle hibernation and `--shutdown hibernate` go through `engine.may_hibernate`, which
    the admission chain wires to the sandbox's effective policy."""
    sandbox = _sandbox("p4")
    for_engine(engine)
    assert engine.may_hibernate(sandbox)
    for_engine(engine).policies.apply(Policy(name="awake", tenant="p4", allow_hibernate=False))
    assert not engine.may_hibernate(sandbox)
    assert engine.may_hibernate(_sandbox("p5"))  # another tenant's policy does not apply
