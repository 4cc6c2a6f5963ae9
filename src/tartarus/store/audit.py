"""The audit log (Hermes): an append-only, hash-chained record of privileged actions.

Admission decisions, enforcement actions and policy changes are written here as well as to
the per-sandbox events: events explain one sandbox's life to its owner, the audit log answers
"who did what, and was it tampered with" for an operator. Each row's hash is SHA-256 over the
previous row's hash and its own canonical JSON, so `verify()` finds the first row that was
edited, inserted or removed. Appends take the database's write lock (BEGIN IMMEDIATE), so two
writers cannot chain off the same predecessor.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from tartarus.store.database import Database
from tartarus.store.schema import audit

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: datetime
    kind: str
    actor: str | None
    tenant: str | None
    sandbox_id: str | None
    data: dict[str, Any]
    prev: str
    hash: str


def _digest(
    prev: str,
    ts: datetime,
    kind: str,
    actor: str | None,
    tenant: str | None,
    sandbox_id: str | None,
    data: dict[str, Any],
) -> str:
    body = json.dumps(
        [prev, ts.isoformat(), kind, actor, tenant, sandbox_id, data],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def append(
    conn: sa.Connection,
    kind: str,
    data: dict[str, Any],
    *,
    actor: str | None = None,
    tenant: str | None = None,
    sandbox_id: str | None = None,
) -> str:
    """Append inside the caller's transaction (so the record and what it records commit
    together); returns the new row's hash."""
    last = conn.execute(_LAST_HASH).scalar()
    prev = last or GENESIS
    # microseconds survive SQLite's round trip; the stored value must hash the same later
    ts = datetime.now(UTC)
    digest = _digest(prev, ts, kind, actor, tenant, sandbox_id, data)
    row = {"ts": ts, "kind": kind, "actor": actor, "tenant": tenant, "sandbox_id": sandbox_id}
    conn.execute(_INSERT, {**row, "data": data, "prev": prev, "hash": digest})
    return digest


# built once, not per append: building and keying a statement costs more than running it
_LAST_HASH = sa.select(audit.c.hash).order_by(audit.c.seq.desc()).limit(1)
_INSERT = audit.insert()


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        actor: str | None = None,
        tenant: str | None = None,
        sandbox_id: str | None = None,
    ) -> str:
        with self.db.begin() as conn:
            return append(conn, kind, data, actor=actor, tenant=tenant, sandbox_id=sandbox_id)

    def list(
        self,
        *,
        tenant: str | None = None,
        kind: str | None = None,
        sandbox_id: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Oldest first, from `after` (a seq): a cursor for paging and for tailing."""
        query = sa.select(audit).where(audit.c.seq > after).order_by(audit.c.seq).limit(limit)
        if tenant is not None:
            query = query.where(audit.c.tenant == tenant)
        if kind is not None:
            query = query.where(audit.c.kind.startswith(kind))
        if sandbox_id is not None:
            query = query.where(audit.c.sandbox_id == sandbox_id)
        with self.db.begin() as conn:
            rows = conn.execute(query).all()
        return [_record(r) for r in rows]

    def verify(self) -> int | None:
        """The seq of the first row whose chain is broken, or None if the chain is whole."""
        prev = GENESIS
        with self.db.begin() as conn:
            for row in conn.execute(sa.select(audit).order_by(audit.c.seq)):
                rec = _record(row)
                expected = _digest(
                    prev, rec.ts, rec.kind, rec.actor, rec.tenant, rec.sandbox_id, rec.data
                )
                if rec.prev != prev or rec.hash != expected:
                    return rec.seq
                prev = rec.hash
        return None


def _record(row: sa.Row[Any]) -> AuditRecord:
    ts = row.ts if row.ts.tzinfo else row.ts.replace(tzinfo=UTC)  # SQLite drops the zone
    return AuditRecord(
        seq=row.seq,
        ts=ts,
        kind=row.kind,
        actor=row.actor,
        tenant=row.tenant,
        sandbox_id=row.sandbox_id,
        data=row.data,
        prev=row.prev,
        hash=row.hash,
    )
