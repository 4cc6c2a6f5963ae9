"""`tartarus audit`: read and verify the hash-chained audit log of a server (admin key
needed) or, without TARTARUS_URL, of this machine's state dir."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from tartarus.cli.admin import _admin, _table, _text
from tartarus.cli.backend import CLIError

if TYPE_CHECKING:
    from tartarus.sdk._client import AsyncClient
    from tartarus.store.audit import AuditLog

AUDIT = "the audit log"
T = TypeVar("T")


def _on(remote: Callable[[AsyncClient], Awaitable[T]], local: Callable[[AuditLog], T]) -> T:
    from tartarus.cli.backend import cli_errors, is_remote

    if is_remote():
        return _admin(remote, AUDIT)
    from tartarus.config import Settings
    from tartarus.store import Database
    from tartarus.store.audit import AuditLog

    with cli_errors():
        db = Database(Settings().db_path)
        try:
            return local(AuditLog(db))
        finally:
            db.close()


@click.group()
def audit() -> None:
    """List and verify the audit log (Hermes)."""


@audit.command("ls")
@click.option("--tenant", default=None, help="Only this tenant's records.")
@click.option("--kind", default=None, help="Kind prefix, e.g. admission. or policy.apply.")
@click.option("--sandbox", "sandbox_id", default=None, help="Only this sandbox's records.")
@click.option("--after", type=click.IntRange(0), default=0, help="Records after this seq.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def audit_ls(
    tenant: str | None,
    kind: str | None,
    sandbox_id: str | None,
    after: int,
    limit: int,
    as_json: bool,
) -> None:
    """List audit records, oldest first."""
    from tartarus.sdk import admin

    def local(log: AuditLog) -> admin.AuditPage:
        found = log.list(
            tenant=tenant, kind=kind, sandbox_id=sandbox_id, after=after, limit=limit + 1
        )
        items = [admin.AuditRecord.model_validate(r, from_attributes=True) for r in found]
        more = len(items) > limit
        return admin.AuditPage(
            items=items[:limit], next_cursor=items[limit - 1].seq if more else None
        )

    page = _on(
        lambda c: c.call(
            admin.list_audit(
                tenant=tenant, kind=kind, sandbox_id=sandbox_id, after=after, limit=limit
            )
        ),
        local,
    )
    if as_json:
        for rec in page.items:
            click.echo(rec.model_dump_json())
        return
    columns = ("seq", "ts", "kind", "actor", "tenant", "sandbox_id", "detail")
    rows = []
    for rec in page.items:
        detail = rec.data.get("reason") or rec.data.get("quarantine") or rec.data.get("name")
        rows.append(
            [
                str(rec.seq),
                rec.ts.strftime("%Y-%m-%d %H:%M:%S"),
                rec.kind,
                _text(rec.actor),
                _text(rec.tenant),
                _text(rec.sandbox_id),
                _text(detail),
            ]
        )
    _table(columns, rows)
    if page.next_cursor is not None:
        click.echo(f"more: --after {page.next_cursor}", err=True)


@audit.command("verify")
def audit_verify() -> None:
    """Recompute the hash chain; exit 1 if a record was changed, inserted or removed."""
    from tartarus.sdk import admin

    def local(log: AuditLog) -> admin.AuditVerify:
        broken = log.verify()
        return admin.AuditVerify(ok=broken is None, broken_at=broken)

    result = _on(lambda c: c.call(admin.verify_audit()), local)
    if not result.ok:
        raise CLIError(f"the audit chain is broken at record {result.broken_at}")
    click.echo("ok: the audit chain is whole")
