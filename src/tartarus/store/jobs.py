"""Acheron, the job queue: how a submitted sandbox travels to the node that starts it.

The submit path writes the sandbox record and its `create` job in one transaction; a node
engine claims jobs, starts the sandboxes and completes the jobs. On one machine the engine
that submitted a job usually claims it at once (so a create is not slower for the queue), but
any node may claim what is queued: that is the seam where fleet mode puts HTTP between the
control plane and remote node agents, which never touch the database themselves.

Claims are atomic (a conditional UPDATE inside BEGIN IMMEDIATE on SQLite; SKIP LOCKED when
this runs on PostgreSQL) and leased: a claim whose node stopped renewing it is claimable
again after `lease_until`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from tartarus.store.database import Database
from tartarus.store.schema import jobs

LEASE_S = 120.0


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    sandbox_id: str
    state: str
    node: str | None
    attempts: int
    error: str | None


def _now() -> datetime:
    return datetime.now(UTC)


def _job(row: sa.Row[tuple[object, ...]]) -> Job:
    m = row._mapping
    return Job(
        id=int(str(m["id"])),
        kind=str(m["kind"]),
        sandbox_id=str(m["sandbox_id"]),
        state=str(m["state"]),
        node=None if m["node"] is None else str(m["node"]),
        attempts=int(str(m["attempts"])),
        error=None if m["error"] is None else str(m["error"]),
    )


def enqueue(conn: sa.Connection, kind: str, sandbox_id: str) -> int:
    """Queue a job inside the caller's transaction (the one that writes the sandbox)."""
    now = _now()
    row = {"kind": kind, "sandbox_id": sandbox_id, "state": "queued", "attempts": 0}
    result = conn.execute(_ENQUEUE, {**row, "created_at": now, "updated_at": now})
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def claim_own(conn: sa.Connection, job_id: int, node: str) -> None:
    """Claim a job this node has just queued in the same transaction (one machine: the
    submitter starts the sandbox itself, with no window for another node to take it)."""
    now = _now()
    lease = now + timedelta(seconds=LEASE_S)
    conn.execute(
        _CLAIM_OWN,
        {"job": job_id, "state": "claimed", "node": node, "attempts": 1}
        | {"lease_until": lease, "updated_at": now},
    )


def complete(conn: sa.Connection, job_id: int, node: str, error: str | None = None) -> bool:
    """Mark a job `node` holds as done (or failed with `error`) inside the caller's
    transaction; False if the node does not hold it."""
    outcome = {"state": "failed" if error else "done", "error": error, "lease_until": None}
    result = conn.execute(
        _COMPLETE, {"job": job_id, "holder": node, **outcome, "updated_at": _now()}
    )
    return bool(result.rowcount)


# the statements of every create, built once: building and keying one per call cost more
# than running it
_ENQUEUE = jobs.insert()
_CLAIM_OWN = jobs.update().where(jobs.c.id == sa.bindparam("job"))
_COMPLETE = jobs.update().where(
    jobs.c.id == sa.bindparam("job"),
    jobs.c.node == sa.bindparam("holder"),
    jobs.c.state == "claimed",
)


class JobQueue:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _claimable(self) -> sa.ColumnElement[bool]:
        return sa.or_(
            jobs.c.state == "queued",
            sa.and_(jobs.c.state == "claimed", jobs.c.lease_until < _now()),
        )

    def claim(self, node: str, *, job_id: int | None = None, limit: int = 1) -> list[Job]:
        """Claim up to `limit` claimable jobs (or the one `job_id`) for `node`, oldest first."""
        with self.db.begin() as conn:
            query = sa.select(jobs.c.id).where(self._claimable()).order_by(jobs.c.id).limit(limit)
            if job_id is not None:
                query = query.where(jobs.c.id == job_id)
            ids = [r.id for r in conn.execute(query)]
            if not ids:
                return []
            conn.execute(
                jobs.update()
                .where(jobs.c.id.in_(ids))
                .values(
                    state="claimed",
                    node=node,
                    attempts=jobs.c.attempts + 1,
                    lease_until=_now() + timedelta(seconds=LEASE_S),
                    updated_at=_now(),
                )
            )
            rows = conn.execute(sa.select(jobs).where(jobs.c.id.in_(ids)).order_by(jobs.c.id))
            return [_job(r) for r in rows]

    def finish(self, job_id: int, node: str, *, error: str | None = None) -> bool:
        """Mark a job this node holds as done (or failed with `error`); False if not held."""
        with self.db.begin() as conn:
            return complete(conn, job_id, node, error)

    def abandon(self, sandbox_id: str, error: str) -> int:
        """Fail every unfinished job of a sandbox that was reaped; returns how many."""
        with self.db.begin() as conn:
            result = conn.execute(
                jobs.update()
                .where(jobs.c.sandbox_id == sandbox_id, jobs.c.state.in_(["queued", "claimed"]))
                .values(state="failed", error=error, lease_until=None, updated_at=_now())
            )
        return int(result.rowcount)

    def for_sandbox(self, sandbox_id: str) -> list[Job]:
        with self.db.begin() as conn:
            rows = conn.execute(
                sa.select(jobs).where(jobs.c.sandbox_id == sandbox_id).order_by(jobs.c.id)
            )
            return [_job(r) for r in rows]
