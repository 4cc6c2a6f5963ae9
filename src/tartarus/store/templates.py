"""Registered templates: user templates built from YAML files or imported from OCI images.
Built-in templates are not stored; they ship with the package (images/builtin/)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tartarus.models import TemplateSpec
from tartarus.store.database import Database
from tartarus.store.schema import templates


class TemplateRecord:
    __slots__ = ("image", "source", "spec")

    def __init__(self, spec: TemplateSpec, image: str | None, source: str) -> None:
        self.spec = spec
        self.image = image
        self.source = source


class TemplateRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, spec: TemplateSpec, image: str | None, source: str) -> None:
        values = {
            "name": spec.name,
            "spec": spec.model_dump(mode="json"),
            "image": image,
            "source": source,
            "updated_at": datetime.now(UTC),
        }
        stmt = sqlite_insert(templates).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=["name"], set_=values)
        with self.db.begin() as conn:
            conn.execute(stmt)

    def get(self, name: str) -> TemplateRecord | None:
        with self.db.begin() as conn:
            row = conn.execute(sa.select(templates).where(templates.c.name == name)).first()
        if row is None:
            return None
        return TemplateRecord(TemplateSpec.model_validate(row.spec), row.image, row.source)

    def list(self) -> list[TemplateRecord]:
        with self.db.begin() as conn:
            rows = conn.execute(sa.select(templates).order_by(templates.c.name)).all()
        return [
            TemplateRecord(TemplateSpec.model_validate(r.spec), r.image, r.source) for r in rows
        ]

    def delete(self, name: str) -> bool:
        with self.db.begin() as conn:
            result = conn.execute(templates.delete().where(templates.c.name == name))
        return bool(result.rowcount)
