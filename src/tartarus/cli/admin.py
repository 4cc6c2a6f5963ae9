"""`tartarus keys` and `tartarus tenants`: the server's tenants and API keys (admin key
needed). Remote only: the embedded engine has no tenants, so these say so in one line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tartarus.cli.backend import cli_errors, open_admin

if TYPE_CHECKING:
    from tartarus.sdk._client import AsyncClient

T = TypeVar("T")


def _admin(body: Callable[[AsyncClient], Awaitable[T]], what: str = "keys and tenants") -> T:
    async def main() -> T:
        client = await open_admin(what)
        try:
            return await body(client)
        finally:
            await client.aclose()

    with cli_errors():
        return asyncio.run(main())


def _table(columns: Sequence[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    last = len(columns) - 1
    for i, column in enumerate(columns):
        # on a narrow terminal only the last column (a summary, a date) wraps: names and ids,
        # what users copy, stay whole
        if i < last:
            widest = max([len(column), *(len(row[i]) for row in rows)])
            table.add_column(column.upper(), no_wrap=True, min_width=widest)
        else:
            table.add_column(column.upper())
    for row in rows:
        table.add_row(*row)
    Console(soft_wrap=True).print(table)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


@click.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key acts for.")
@click.option("--role", type=click.Choice(["member", "admin"]), default="member", show_default=True)
@click.option("--name", default=None, help="A label, e.g. ci.")
def keys_create(tenant: str, role: str, name: str | None) -> None:
    """Create a key and print it: this is the only time it is shown."""
    from tartarus.sdk import _api

    key = _admin(lambda c: c.call(_api.create_key(tenant, role, name)))
    click.echo(key.key)
    click.echo(f"key {key.id} for tenant {key.tenant} ({key.role}): store it now", err=True)


@keys.command("ls")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def keys_ls(tenant: str | None, as_json: bool) -> None:
    """List keys (never their secrets)."""
    from tartarus.sdk import _api

    items = [
        k.model_dump(mode="json", exclude={"key"})
        for k in _admin(lambda c: c.call(_api.list_keys(tenant)))
    ]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    columns = ("id", "tenant", "role", "name", "created_at", "revoked_at")
    _table(columns, [[_text(k[c]) for c in columns] for k in items])


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key at once; print its id."""
    from tartarus.sdk import _api

    click.echo(_admin(lambda c: c.call(_api.revoke_key(key_id))).id)


@click.group()
def tenants() -> None:
    """Create and list tenants."""


@tenants.command("create")
@click.argument("name")
def tenants_create(name: str) -> None:
    """Create a tenant; print its name."""
    from tartarus.sdk import _api

    click.echo(_admin(lambda c: c.call(_api.create_tenant(name))).name)


@tenants.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tenants_ls(as_json: bool) -> None:
    """List tenants."""
    from tartarus.sdk import _api

    items = [t.model_dump(mode="json") for t in _admin(lambda c: c.call(_api.list_tenants()))]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    _table(("name", "created_at"), [[_text(t["name"]), _text(t["created_at"])] for t in items])
