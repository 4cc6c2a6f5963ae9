"""Themis' policies in the database: versioned, each change an audit record.

Applying a policy writes version n+1 beside the older ones (history stays readable with
`get(name, version=)`); the newest version of each name is the one in force. Deleting
removes every version; the audit record written in the same transaction keeps what was
deleted, so a policy change can always be traced to who made it.
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime

import sqlalchemy as sa

from tartarus.errors import NotFoundError
from tartarus.models.policy import Policy
from tartarus.store import audit
from tartarus.store.database import Database
from tartarus.store.schema import policies


class PolicyRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def apply(self, policy: Policy, *, actor: str | None = None) -> Policy:
        """Store `policy` as the next version of its name; returns it with that version."""
        with self.db.begin() as conn:
            last = conn.execute(
                sa.select(sa.func.max(policies.c.version)).where(policies.c.name == policy.name)
            ).scalar()
            stored = policy.model_copy(update={"version": (last or 0) + 1})
            conn.execute(
                policies.insert().values(
                    name=stored.name,
                    version=stored.version,
                    tenant=stored.tenant,
                    template=stored.template,
                    spec=stored.model_dump(mode="json"),
                    created_at=datetime.now(UTC),
                )
            )
            audit.append(
                conn,
                "policy.apply",
                stored.model_dump(mode="json"),
                actor=actor,
                tenant=None if stored.tenant == "*" else stored.tenant,
            )
        return stored

    def get(self, name: str, *, version: int | None = None) -> Policy:
        query = sa.select(policies.c.spec).where(policies.c.name == name)
        if version is None:
            query = query.order_by(policies.c.version.desc()).limit(1)
        else:
            query = query.where(policies.c.version == version)
        with self.db.begin() as conn:
            spec = conn.execute(query).scalar()
        if spec is None:
            at = "" if version is None else f" version {version}"
            raise NotFoundError(f"no policy {name!r}{at}")
        return Policy.model_validate(spec)

    def versions(self, name: str) -> builtins.list[Policy]:
        with self.db.begin() as conn:
            rows = conn.execute(
                sa.select(policies.c.spec)
                .where(policies.c.name == name)
                .order_by(policies.c.version)
            ).all()
        if not rows:
            raise NotFoundError(f"no policy {name!r}")
        return [Policy.model_validate(r.spec) for r in rows]

    def list(self) -> builtins.list[Policy]:
        """The version in force of every policy, by name."""
        with self.db.begin() as conn:
            return in_force(conn)

    def matching(self, tenant: str | None, template: str) -> builtins.list[Policy]:
        """The policies in force whose scope covers this tenant and template."""
        with self.db.begin() as conn:
            return in_force(conn, tenant=tenant, template=template)

    def delete(self, name: str, *, actor: str | None = None) -> Policy:
        """Remove every version of `name`; returns the one that was in force."""
        current = self.get(name)
        with self.db.begin() as conn:
            conn.execute(policies.delete().where(policies.c.name == name))
            audit.append(
                conn,
                "policy.delete",
                current.model_dump(mode="json"),
                actor=actor,
                tenant=None if current.tenant == "*" else current.tenant,
            )
        return current


def _in_force_query(scoped: bool) -> sa.Select[tuple[dict[str, object]]]:
    newest = (
        sa.select(policies.c.name, sa.func.max(policies.c.version).label("version"))
        .group_by(policies.c.name)
        .subquery()
    )
    query = (
        sa.select(policies.c.spec)
        .join(
            newest,
            sa.and_(policies.c.name == newest.c.name, policies.c.version == newest.c.version),
        )
        .order_by(policies.c.name)
    )
    if scoped:
        query = query.where(
            policies.c.tenant.in_(sa.bindparam("scopes", expanding=True)),
            policies.c.template.in_(sa.bindparam("templates", expanding=True)),
        )
    return query


# built once: every admission asks, and building and keying the statement each time cost
# five times the query itself
_ALL, _SCOPED = _in_force_query(False), _in_force_query(True)


def in_force(
    conn: sa.Connection, *, tenant: str | None = None, template: str | None = None
) -> list[Policy]:
    """The newest version of each policy, inside the caller's transaction; with `template`,
    only those whose scope covers `tenant` and `template`."""
    if template is None:
        rows = conn.execute(_ALL).all()
    else:
        scopes = ["*"] if tenant is None else ["*", tenant]
        rows = conn.execute(_SCOPED, {"scopes": scopes, "templates": ["*", template]}).all()
    return [Policy.model_validate(r.spec) for r in rows]
