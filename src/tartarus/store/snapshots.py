"""Snapshot records (Nyx): what a snapshot holds and where it came from.

The record is one JSON document validated by `Snapshot`; columns exist only for lookups
(by name within a tenant, by parent, by age for the retention policy). Names are unique per
tenant, checked in the insert's transaction.
"""

from __future__ import annotations

import builtins
from datetime import datetime

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from tartarus.errors import ConflictError, NotFoundError
from tartarus.models import Resources
from tartarus.store.database import Database
from tartarus.store.schema import snapshots

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class Snapshot(BaseModel):
    """A saved writable layer and, for a memory snapshot, a checkpoint of its processes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str | None = Field(None, pattern=NAME_PATTERN)
    tenant: str | None = None
    template: str
    image: str  # content hash of the image the layer was written over
    runtime: str  # of the source sandbox; clones may use any runtime (files only)
    resources: Resources
    source: str  # the sandbox it was taken from
    parent: str | None = None  # the snapshot the source was started from (lies below)
    size_bytes: int
    memory: bool = False  # a checkpoint image is saved beside the layer (node/snapshots.py)
    created_at: datetime


def _of(row: sa.Row[tuple[object, ...]]) -> Snapshot:
    return Snapshot.model_validate(row._mapping["record"])


class SnapshotRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, snap: Snapshot) -> None:
        with self.db.begin() as conn:
            if snap.name is not None:
                taken = conn.execute(
                    sa.select(snapshots.c.id).where(
                        snapshots.c.name == snap.name, _tenant_is(snap.tenant)
                    )
                ).first()
                if taken is not None:
                    raise ConflictError(f"a snapshot named {snap.name!r} exists ({taken.id})")
            conn.execute(
                snapshots.insert().values(
                    id=snap.id,
                    name=snap.name,
                    tenant=snap.tenant,
                    parent=snap.parent,
                    record=snap.model_dump(mode="json"),
                    created_at=snap.created_at,
                )
            )

    def get(self, ref: str, *, tenant: str | None = None, any_tenant: bool = False) -> Snapshot:
        """By id, else by name within `tenant`; another tenant's is as unknown as a missing
        one (`any_tenant`: the embedded engine and admins see all)."""
        with self.db.begin() as conn:
            query = sa.select(snapshots.c.record)
            row = conn.execute(query.where(snapshots.c.id == ref)).first()
            if row is None:
                by_name = query.where(snapshots.c.name == ref)
                if not any_tenant:
                    by_name = by_name.where(_tenant_is(tenant))
                row = conn.execute(by_name.order_by(snapshots.c.created_at.desc())).first()
        if row is None:
            raise NotFoundError(f"no snapshot {ref!r}")
        snap = _of(row)
        if not any_tenant and snap.tenant != tenant:
            raise NotFoundError(f"no snapshot {ref!r}")
        return snap

    def list(
        self, *, tenant: str | None = None, any_tenant: bool = False
    ) -> builtins.list[Snapshot]:
        """Oldest first."""
        query = sa.select(snapshots.c.record).order_by(snapshots.c.created_at, snapshots.c.id)
        if not any_tenant:
            query = query.where(_tenant_is(tenant))
        with self.db.begin() as conn:
            return [_of(r) for r in conn.execute(query).all()]

    def children(self, snapshot_id: str) -> builtins.list[str]:
        with self.db.begin() as conn:
            rows = conn.execute(
                sa.select(snapshots.c.id).where(snapshots.c.parent == snapshot_id)
            ).all()
        return [r.id for r in rows]

    def delete(self, snapshot_id: str) -> bool:
        with self.db.begin() as conn:
            result = conn.execute(snapshots.delete().where(snapshots.c.id == snapshot_id))
        return bool(result.rowcount)


def _tenant_is(tenant: str | None) -> sa.ColumnElement[bool]:
    return snapshots.c.tenant.is_(None) if tenant is None else snapshots.c.tenant == tenant
