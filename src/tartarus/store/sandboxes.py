"""Sandbox records. Writes re-check the state machine inside the transaction, so two writers
(the supervisor and a kill request) cannot move a sandbox backwards or out of a final state."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from tartarus.errors import NotFoundError
from tartarus.models import Sandbox, SandboxState, check_transition
from tartarus.store import jobs
from tartarus.store.database import Database
from tartarus.store.schema import events, sandboxes


def _now() -> datetime:
    return datetime.now(UTC)


class SandboxRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(
        self,
        sandbox: Sandbox,
        owner: str | None = None,
        *,
        job: str | None = None,
        start: bool = False,
    ) -> int | None:
        """Write a new record; with `job`, queue a job of that kind in the same transaction
        and return its id. With `start` as well, `owner` claims that job at once and the
        sandbox moves on to STARTING, still in the same transaction (one machine)."""
        with self.db.begin() as conn:
            conn.execute(
                sandboxes.insert().values(
                    id=sandbox.id,
                    state=sandbox.state.value,
                    tenant=sandbox.tenant,
                    template=sandbox.spec.template,
                    runtime=sandbox.runtime,
                    owner=owner,
                    pool=sandbox.pool,
                    record=sandbox.model_dump(mode="json"),
                    created_at=sandbox.created_at,
                    updated_at=_now(),
                )
            )
            add_event(conn, sandbox.id, "state", {"from": None, "to": sandbox.state.value})
            job_id = jobs.enqueue(conn, job, sandbox.id) if job else None
            if start:
                assert job_id is not None and owner is not None, "start needs a job and an owner"
                jobs.claim_own(conn, job_id, owner)
                self._write(conn, sandbox, {"state": SandboxState.STARTING})
            return job_id

    def get(self, sandbox_id: str) -> Sandbox:
        with self.db.begin() as conn:
            row = conn.execute(
                sa.select(sandboxes.c.record).where(sandboxes.c.id == sandbox_id)
            ).first()
        if row is None:
            raise NotFoundError(f"no sandbox {sandbox_id!r}")
        return Sandbox.model_validate(row.record)

    def list(
        self,
        states: Iterable[SandboxState] | None = None,
        *,
        tenant: str | None = None,
        metadata: dict[str, str] | None = None,
        limit: int | None = None,
        before: str | None = None,
        pooled: bool = False,
    ) -> list[Sandbox]:
        """Oldest first; with `limit`, the newest `limit` ones created before the id `before`.
        Sandboxes waiting in a warm pool belong to nobody yet: listed only with `pooled`."""
        query = sa.select(sandboxes.c.record)
        if not pooled:
            query = query.where(sandboxes.c.pool.is_(None))
        if states is not None:
            query = query.where(sandboxes.c.state.in_([s.value for s in states]))
        if tenant is not None:
            query = query.where(sandboxes.c.tenant == tenant)
        if before is not None:
            pivot = sa.select(sandboxes.c.created_at).where(sandboxes.c.id == before)
            query = query.where(sandboxes.c.created_at < pivot.scalar_subquery())
        if limit is not None:
            query = query.order_by(sandboxes.c.created_at.desc())
        else:
            query = query.order_by(sandboxes.c.created_at)
        with self.db.begin() as conn:
            rows = conn.execute(query).all()
        found = [Sandbox.model_validate(r.record) for r in rows]
        if metadata:
            found = [
                s for s in found if all(s.spec.metadata.get(k) == v for k, v in metadata.items())
            ]
        return found[:limit] if limit is not None else found

    def update(
        self,
        sandbox: Sandbox,
        *,
        job_done: tuple[int, str] | None = None,
        release: bool = False,
        **changes: Any,
    ) -> Sandbox:
        """Apply `changes` (a `state` change is checked against the stored state) and persist;
        in the same transaction, `job_done=(job, node)` completes that job and `release`
        clears the owner (the sandbox has ended)."""
        with self.db.begin() as conn:
            merged = self._write(conn, sandbox, changes, release=release)
            if job_done is not None:
                jobs.complete(conn, *job_done)
        return merged

    def _write(
        self, conn: sa.Connection, sandbox: Sandbox, changes: dict[str, Any], release: bool = False
    ) -> Sandbox:
        row = conn.execute(_RECORD, {"sid": sandbox.id}).first()
        if row is None:
            raise NotFoundError(f"no sandbox {sandbox.id!r}")
        stored = Sandbox.model_validate(row.record)
        target = changes.get("state")
        if target is not None and target != stored.state:
            check_transition(stored.state, target)
        merged = stored.model_copy(update=changes)
        merged = Sandbox.model_validate(merged.model_dump())
        values: dict[str, Any] = {
            "state": merged.state.value,
            "tenant": merged.tenant,  # a pooled sandbox gets its tenant at hand-out
            "pool": merged.pool,
            "record": merged.model_dump(mode="json"),
            "updated_at": _now(),
        }
        if release:
            values["owner"] = None
        conn.execute(_UPDATE, {**values, "sid": sandbox.id})
        if target is not None and target != stored.state:
            data = {
                "from": stored.state.value,
                "to": merged.state.value,
                "reason": merged.reason,
            }
            add_event(conn, sandbox.id, "state", data)
        return merged

    def owners(self, states: Iterable[SandboxState]) -> dict[str, str | None]:
        with self.db.begin() as conn:
            rows = conn.execute(
                sa.select(sandboxes.c.id, sandboxes.c.owner).where(
                    sandboxes.c.state.in_([s.value for s in states])
                )
            ).all()
        return {r.id: r.owner for r in rows}

    def owner(self, sandbox_id: str) -> str | None:
        with self.db.begin() as conn:
            owner: str | None = conn.execute(
                sa.select(sandboxes.c.owner).where(sandboxes.c.id == sandbox_id)
            ).scalar()
        return owner

    def claim(self, sandbox_id: str, expected: str | None, owner: str) -> bool:
        """Take ownership only if nobody else took it since we read `expected` (atomic)."""
        with self.db.begin() as conn:
            result = conn.execute(
                sandboxes.update()
                .where(sandboxes.c.id == sandbox_id)
                .where(
                    sandboxes.c.owner.is_(None)
                    if expected is None
                    else sandboxes.c.owner == expected
                )
                .values(owner=owner)
            )
        return bool(result.rowcount)

    def set_owner(self, sandbox_id: str, owner: str | None) -> None:
        with self.db.begin() as conn:
            conn.execute(sandboxes.update().where(sandboxes.c.id == sandbox_id).values(owner=owner))

    def delete(self, sandbox_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(sandboxes.delete().where(sandboxes.c.id == sandbox_id))

    def events(self, sandbox_id: str) -> builtins.list[dict[str, Any]]:
        with self.db.begin() as conn:
            rows = conn.execute(
                sa.select(events.c.kind, events.c.data, events.c.ts)
                .where(events.c.sandbox_id == sandbox_id)
                .order_by(events.c.seq)
            ).all()
        return [_shown(r.kind, r.ts, r.data) for r in rows]


def _shown(kind: str, ts: datetime, data: dict[str, Any]) -> dict[str, Any]:
    """A state change as {from, to, reason}; any other event (admission, enforcement,
    network) as its kind, a one-line reason and its data."""
    if kind == "state":
        return {"ts": ts, "kind": kind, **data}
    reason = data.get("reason") or data.get("outcome")
    return {"ts": ts, "kind": kind, "reason": reason, "data": data}


def add_event(conn: sa.Connection, sandbox_id: str | None, kind: str, data: dict[str, Any]) -> None:
    """One of a sandbox's events, inside the caller's transaction."""
    conn.execute(_EVENT, {"ts": _now(), "sandbox_id": sandbox_id, "kind": kind, "data": data})


# the statements of every state change, built once: building and keying one per call cost
# more than running it
_RECORD = sa.select(sandboxes.c.record).where(sandboxes.c.id == sa.bindparam("sid"))
_UPDATE = sandboxes.update().where(sandboxes.c.id == sa.bindparam("sid"))
_EVENT = events.insert()
