"""The Judges: every create passes one ordered chain before the engine sees it.

Order: authentication context (Cerberus), quota (Minos), resources and runtime
(Rhadamanthus), network (Styx), classification (Typhon), then plugin judges. The first
reject ends the chain (`AdmissionDenied`: HTTP 403 naming the judge); a quarantine is
applied after the last judge (`quarantine.py`). Each judge is timed and the decisions go,
with the policies that applied, into the audit log and (once the sandbox exists) its events.

The slow facts (matching policies, which runtimes work) are gathered once per request, and
the tenant's usage and recent creates when a judge first asks (only quotas and rate limits
need them), so judges are plain functions. A judge that raises
refuses the request (fail closed) with its error as the reason.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from tartarus.control import plugins
from tartarus.control.judges import builtin
from tartarus.control.judges.ratelimit import WINDOW_S
from tartarus.control.judging import AdmissionRequest, Judge, Outcome, Usage, Verdict
from tartarus.control.quarantine import force
from tartarus.errors import AdmissionDenied, NotFoundError
from tartarus.models import TERMINAL_STATES, Resources, Sandbox, SandboxSpec, SandboxState
from tartarus.models.policy import EffectivePolicy, combine
from tartarus.node.engine import Engine
from tartarus.runtimes.registry import BY_SPEED
from tartarus.store import audit
from tartarus.store.policies import PolicyRepository, in_force
from tartarus.store.sandboxes import add_event
from tartarus.store.schema import audit as audit_table
from tartarus.store.schema import sandboxes

log = structlog.get_logger("tartarus.admission")

WORKING_TTL_S = 10.0  # probes are cached on disk; this saves re-reading them per request
_LIVE_STATES = [s.value for s in SandboxState if s not in TERMINAL_STATES]


@dataclass(frozen=True)
class Decision:
    judge: str
    outcome: Outcome
    reason: str
    ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "ms": self.ms,
        }


@dataclass
class Admitted:
    """An admitted request: the spec to create, and how it was decided."""

    spec: SandboxSpec
    tenant: str | None
    actor: str | None
    decisions: list[Decision]
    policy: EffectivePolicy
    quarantine: str | None
    ms: float
    reserved: Resources = field(repr=False, default_factory=Resources)

    @property
    def outcome(self) -> Outcome:
        return Outcome.QUARANTINE if self.quarantine else Outcome.ACCEPT

    def summary(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "quarantine": self.quarantine,
            "policies": list(self.policy.sources),
            "decisions": [d.as_dict() for d in self.decisions],
            "ms": self.ms,
        }


class Admission:
    def __init__(self, engine: Engine, judges: list[Judge] | None = None) -> None:
        self.engine = engine
        self.policies = PolicyRepository(engine.db)
        self.judges: list[Judge] = judges if judges is not None else [*builtin(), *plugins.load()]
        self._inflight: dict[str | None, list[Resources]] = {}
        self._working: tuple[float, tuple[str, ...]] | None = None

    def policy_for(self, tenant: str | None, template: str) -> EffectivePolicy:
        return combine(self.policies.matching(tenant, template))

    async def admit(self, spec: SandboxSpec, *, tenant: str | None, actor: str | None) -> Admitted:
        """Run the chain; AdmissionDenied on a reject (already audited). The caller must
        `release` the result once the create has returned or failed."""
        started = time.perf_counter()
        template = self.engine.catalog.resolve(spec.template).spec.resources
        with self.engine.db.begin() as conn:
            policy = combine(in_force(conn, tenant=tenant, template=spec.template))
        inflight = list(self._inflight.get(tenant, []))

        def count_usage() -> Usage:
            with self.engine.db.begin() as conn:
                usage = _usage(conn, tenant)
            for held in inflight:
                usage = usage.plus(held)
            return usage

        def count_recent() -> int:
            with self.engine.db.begin() as conn:
                return _recent_creates(conn, tenant) + len(inflight)

        request = AdmissionRequest(
            spec=spec,
            tenant=tenant,
            actor=actor,
            policy=policy,
            template_resources=template,
            runtimes={
                n: r.capabilities.isolation for n, r in self.engine.runtimes.runtimes.items()
            },
            working=await self._working_runtimes(),
            snapshot_runtime=self._snapshot_runtime(spec, tenant),
            count_usage=count_usage,
            count_recent=count_recent,
            db=self.engine.db,
            now=datetime.now(UTC),
        )
        decisions: list[Decision] = []
        reasons: list[str] = []
        for judge in self.judges:
            t0 = time.perf_counter()
            try:
                verdict = judge(request)
            except Exception as exc:  # fail closed: a broken judge admits nothing
                log.exception("judge failed", judge=judge.name)
                verdict = Verdict.reject(f"the judge failed: {exc}")
            decisions.append(Decision(judge.name, verdict.outcome, verdict.reason, _ms(t0)))
            if verdict.spec is not None:
                request.spec = verdict.spec
            if verdict.outcome == Outcome.REJECT:
                self._reject(request, decisions, judge.name, verdict.reason, started)
                raise AdmissionDenied(judge.name, verdict.reason)
            if verdict.outcome == Outcome.QUARANTINE:
                reasons.append(f"{judge.name}: {verdict.reason}")
        final = request.spec
        quarantine = "; ".join(reasons) or None
        if quarantine is not None:
            final = force(final, quarantine, request.strongest, request.runtimes)
        reserved = final.resources or template
        self._inflight.setdefault(tenant, []).append(reserved)
        return Admitted(final, tenant, actor, decisions, policy, quarantine, _ms(started), reserved)

    def release(self, admitted: Admitted) -> None:
        held = self._inflight.get(admitted.tenant, [])
        if admitted.reserved in held:
            held.remove(admitted.reserved)
        if not held:
            self._inflight.pop(admitted.tenant, None)

    def record(self, admitted: Admitted, sandbox: Sandbox | None, error: str | None = None) -> None:
        """The decision as an audit record and, once the sandbox exists, as its event."""
        data = admitted.summary()
        if error is not None:
            data["error"] = error
        kind = f"admission.{admitted.outcome.value}"
        sandbox_id = sandbox.id if sandbox is not None else None
        with self.engine.db.begin() as conn:
            if sandbox_id is not None:
                add_event(conn, sandbox_id, "admission", data)
            audit.append(
                conn,
                kind,
                data,
                actor=admitted.actor,
                tenant=admitted.tenant,
                sandbox_id=sandbox_id,
            )

    def _reject(
        self,
        request: AdmissionRequest,
        decisions: list[Decision],
        judge: str,
        reason: str,
        started: float,
    ) -> None:
        data = {
            "outcome": Outcome.REJECT.value,
            "judge": judge,
            "reason": reason,
            "template": request.spec.template,
            "policies": list(request.policy.sources),
            "decisions": [d.as_dict() for d in decisions],
            "ms": _ms(started),
        }
        with self.engine.db.begin() as conn:
            audit.append(conn, "admission.reject", data, actor=request.actor, tenant=request.tenant)

    async def _working_runtimes(self) -> tuple[str, ...]:
        now = time.monotonic()
        if self._working is not None and now - self._working[0] < WORKING_TTL_S:
            return self._working[1]
        registry = self.engine.runtimes
        working = tuple([n for n in BY_SPEED if (await registry.probe(n)).works])
        self._working = (now, working)
        return working

    def _snapshot_runtime(self, spec: SandboxSpec, tenant: str | None) -> str | None:
        if spec.snapshot is None:
            return None
        try:
            snap = self.engine.snapshots.get(
                spec.snapshot, tenant=tenant, any_tenant=tenant is None
            )
        except NotFoundError:
            return None  # the engine says so, with the same message as without admission
        return snap.runtime


_ADMISSIONS: weakref.WeakKeyDictionary[Engine, Admission] = weakref.WeakKeyDictionary()


def for_engine(engine: Engine) -> Admission:
    """The engine's admission chain (plugins loaded once per engine)."""
    admission = _ADMISSIONS.get(engine)
    if admission is None:
        admission = _ADMISSIONS[engine] = Admission(engine)
        # the engine's own hibernations (idle, shutdown) obey the same policy as requests
        engine.may_hibernate = lambda sandbox: (
            admission.policy_for(sandbox.tenant, sandbox.spec.template).allow_hibernate
        )
    return admission


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def _tenant_is(column: Any, tenant: str | None) -> Any:
    return column.is_(None) if tenant is None else column == tenant


def _usage(conn: sa.Connection, tenant: str | None) -> Usage:
    query = sa.select(sandboxes.c.record).where(
        sandboxes.c.pool.is_(None),
        sandboxes.c.state.in_(_LIVE_STATES),
        _tenant_is(sandboxes.c.tenant, tenant),
    )
    usage = Usage()
    rows = conn.execute(query).all()
    for row in rows:
        usage = usage.plus(Sandbox.model_validate(row.record).resources)
    return usage


def _recent_creates(conn: sa.Connection, tenant: str | None) -> int:
    since = datetime.now(UTC) - timedelta(seconds=WINDOW_S)
    query = sa.select(sa.func.count()).where(
        audit_table.c.kind.in_(["admission.accept", "admission.quarantine"]),
        audit_table.c.ts >= since,
        _tenant_is(audit_table.c.tenant, tenant),
    )
    return int(conn.execute(query).scalar() or 0)
