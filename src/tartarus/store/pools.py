"""Warm pool settings, kept in the database so a restarted server refills the same pools."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from tartarus.errors import NotFoundError
from tartarus.models.pool import PoolSpec
from tartarus.store.database import Database
from tartarus.store.schema import pools


class PoolRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def list(self) -> list[PoolSpec]:
        with self.db.begin() as conn:
            rows = conn.execute(sa.select(pools.c.spec).order_by(pools.c.template)).all()
        return [PoolSpec.model_validate(r.spec) for r in rows]

    def put(self, spec: PoolSpec) -> None:
        values = {"spec": spec.model_dump(mode="json"), "updated_at": datetime.now(UTC)}
        with self.db.begin() as conn:
            updated = conn.execute(
                pools.update().where(pools.c.template == spec.template).values(**values)
            )
            if not updated.rowcount:
                conn.execute(pools.insert().values(template=spec.template, **values))

    def delete(self, template: str) -> None:
        with self.db.begin() as conn:
            deleted = conn.execute(pools.delete().where(pools.c.template == template))
        if not deleted.rowcount:
            raise NotFoundError(f"no pool for template {template!r}")
