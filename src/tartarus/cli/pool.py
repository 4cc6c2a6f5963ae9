"""`tartarus pool`: a server's warm pools (admin key needed). Remote only: an embedded engine
lives as long as one command, too short to keep anything warm."""

from __future__ import annotations

import json

import click

from tartarus.cli.admin import _admin, _table, _text
from tartarus.cli.options import RUNTIME_NAMES

POOLS = "warm pools"


@click.group()
def pool() -> None:
    """Keep sandboxes of a template ready ahead of demand."""


@pool.command("set")
@click.argument("template")
@click.option("--min", "min_", type=click.IntRange(0), required=True, help="Ready when idle.")
@click.option("--max", "max_", type=click.IntRange(0), default=None, help="Grow up to (misses).")
@click.option("--runtime", type=click.Choice(RUNTIME_NAMES), default=None, help="Default: auto.")
def pool_set(template: str, min_: int, max_: int | None, runtime: str | None) -> None:
    """Create or change TEMPLATE's pool; it fills in the background."""
    from tartarus.sdk import _api

    if max_ is not None and max_ < min_:
        raise click.BadParameter(f"--max ({max_}) must not be below --min ({min_})")
    status = _admin(lambda c: c.call(_api.set_pool(template, min_, max_, runtime)), POOLS)
    click.echo(f"pool {status.template}: {status.ready} ready, filling to {status.target}")


@pool.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def pool_ls(as_json: bool) -> None:
    """List pools: size, ready, in use and hit rate."""
    from tartarus.sdk import _api

    items = [p.model_dump(mode="json") for p in _admin(lambda c: c.call(_api.list_pools()), POOLS)]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    columns = ("template", "runtime", "min", "max", "ready", "starting", "in_use", "hit_rate")
    rows = []
    for item in items:
        rate = item["hit_rate"]
        item["hit_rate"] = "-" if rate is None else f"{rate:.0%}"
        rows.append([_text(item[c]) for c in columns])
    _table(columns, rows)
    for item in items:
        if item["last_error"]:
            click.echo(
                f"pool {item['template']}: last refill failed: {item['last_error']}", err=True
            )


@pool.command("rm")
@click.argument("templates", nargs=-1, required=True)
def pool_rm(templates: tuple[str, ...]) -> None:
    """Remove pools; their ready sandboxes are killed."""
    for template in templates:
        _remove(template)
        click.echo(template)


def _remove(template: str) -> None:
    from tartarus.sdk import _api

    _admin(lambda c: c.call(_api.delete_pool(template)), POOLS)
