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
        self, sandbox: Sandbox, owner: str | None = None, *, job: str | None = None
    ) -> int | None:
        """Write a new record; with `job`, queue a job of that kind in the same transaction
        and return its id."""
        with self.db.begin() as conn:
            conn.execute(
                sandboxes.insert().values(
                    id=sandbox.id,
                    state=sandbox.state.value,
                    tenant=sandbox.tenant,
                    template=sandbox.spec.template,
                    runtime=sandbox.runtime,
                    owner=owner,
                    record=sandbox.model_dump(mode="json"),
                    created_at=sandbox.created_at,
                    updated_at=_now(),
                )
            )
            _event(conn, sandbox.id, "state", {"from": None, "to": sandbox.state.value})
            return jobs.enqueue(conn, job, sandbox.id) if job else None

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
    ) -> list[Sandbox]:
        """Oldest first; with `limit`, the newest `limit` ones created before the id `before`."""
        query = sa.select(sandboxes.c.record)
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

    def update(self, sandbox: Sandbox, **changes: Any) -> Sandbox:
        """Apply `changes` (a `state` change is checked against the stored state) and persist."""
        with self.db.begin() as conn:
            row = conn.execute(
                sa.select(sandboxes.c.record).where(sandboxes.c.id == sandbox.id)
            ).first()
            if row is None:
                raise NotFoundError(f"no sandbox {sandbox.id!r}")
            stored = Sandbox.model_validate(row.record)
            target = changes.get("state")
            if target is not None and target != stored.state:
                check_transition(stored.state, target)
            merged = stored.model_copy(update=changes)
            merged = Sandbox.model_validate(merged.model_dump())
            conn.execute(
                sandboxes.update()
                .where(sandboxes.c.id == sandbox.id)
                .values(
                    state=merged.state.value,
                    record=merged.model_dump(mode="json"),
                    updated_at=_now(),
                )
            )
            if target is not None and target != stored.state:
                data = {
                    "from": stored.state.value,
                    "to": merged.state.value,
                    "reason": merged.reason,
                }
                _event(conn, sandbox.id, "state", data)
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
        return [{"ts": r.ts, **r.data} for r in rows if r.kind == "state"]


def _event(conn: sa.Connection, sandbox_id: str | None, kind: str, data: dict[str, Any]) -> None:
    conn.execute(events.insert().values(ts=_now(), sandbox_id=sandbox_id, kind=kind, data=data))
