"""`tartarus policy`: Themis' policies, on a server (admin key) or in this machine's state.

With TARTARUS_URL set the server's policies are managed (admin key needed); without it, the
ones in the local state dir, which the embedded CLI's own creates are judged by. `apply
FILE` takes YAML or JSON, one policy or a list, and validates it locally first so a typo is
reported before anything is stored; each becomes the next version of its name.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tartarus.cli.admin import _admin, _table, _text

if TYPE_CHECKING:
    from tartarus.sdk._client import AsyncClient
    from tartarus.store.policies import PolicyRepository

POLICIES = "policies"
T = TypeVar("T")


def _on(remote: Callable[[AsyncClient], Awaitable[T]], local: Callable[[PolicyRepository], T]) -> T:
    """Run `remote` against the server, or `local` against this machine's store."""
    from tartarus.cli.backend import cli_errors, is_remote

    if is_remote():
        return _admin(remote, POLICIES)
    from tartarus.config import Settings
    from tartarus.store import Database
    from tartarus.store.policies import PolicyRepository

    with cli_errors():
        db = Database(Settings().db_path)
        try:
            return local(PolicyRepository(db))
        finally:
            db.close()


@click.group()
def policy() -> None:
    """List, show, apply and remove policies (Themis)."""


@policy.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def policy_ls(as_json: bool) -> None:
    """List the policies in force."""
    from tartarus.sdk import admin

    items = _on(
        lambda c: c.call(admin.list_policies()),
        lambda repo: [p.model_dump(mode="json") for p in repo.list()],
    )
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    columns = ("name", "version", "tenant", "template", "summary")
    _table(columns, [[_text(p[c]) for c in columns[:4]] + [_summary(p)] for p in items])


@policy.command("show")
@click.argument("name")
@click.option("--version", type=click.IntRange(1), default=None, help="An older version.")
def policy_show(name: str, version: int | None) -> None:
    """Print a policy as JSON."""
    from tartarus.sdk import admin

    item = _on(
        lambda c: c.call(admin.get_policy(name, version)),
        lambda repo: repo.get(name, version=version).model_dump(mode="json"),
    )
    click.echo(json.dumps(item, indent=2))


@policy.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def policy_apply(file: Path) -> None:
    """Apply the policies in FILE (YAML or JSON; one or a list) as their next versions."""
    from tartarus.cli.backend import cli_errors
    from tartarus.control.policyfile import load
    from tartarus.control.submit import CLI_ACTOR
    from tartarus.sdk import admin

    with cli_errors():
        policies = load(file)
    bodies = [p.model_dump(mode="json", exclude={"version"}) for p in policies]

    async def remote(client: AsyncClient) -> list[dict[str, Any]]:
        return [await client.call(admin.apply_policy(body)) for body in bodies]

    def local(repo: PolicyRepository) -> list[dict[str, Any]]:
        return [repo.apply(p, actor=CLI_ACTOR).model_dump(mode="json") for p in policies]

    for stored in _on(remote, local):
        click.echo(f"{stored['name']} version {stored['version']}")


@policy.command("rm")
@click.argument("names", nargs=-1, required=True)
def policy_rm(names: tuple[str, ...]) -> None:
    """Remove policies (every version; the audit log keeps them)."""
    from tartarus.control.submit import CLI_ACTOR
    from tartarus.sdk import admin

    async def remote(client: AsyncClient) -> None:
        for name in names:
            await client.call(admin.delete_policy(name))
            click.echo(name)

    def local(repo: PolicyRepository) -> None:
        for name in names:
            repo.delete(name, actor=CLI_ACTOR)
            click.echo(name)

    _on(remote, local)


def _summary(policy: dict[str, Any]) -> str:
    """The fields that constrain something, briefly."""
    parts = []
    for key in ("allowed_templates", "allowed_runtimes", "min_isolation", "max_timeout"):
        if policy.get(key) is not None:
            parts.append(f"{key}={_text(policy[key])}")
    for group in ("max_resources", "quotas"):
        set_ = {k: v for k, v in (policy.get(group) or {}).items() if v is not None}
        if set_:
            parts.append(f"{group}=" + ",".join(f"{k}:{v}" for k, v in set_.items()))
    for flag in ("untrusted",):
        if policy.get(flag):
            parts.append(flag)
    for flag in ("allow_hibernate", "allow_snapshot"):
        if policy.get(flag) is False:
            parts.append(f"no {flag.removeprefix('allow_')}")
    if policy.get("rate_limit") is not None:
        parts.append(f"rate_limit={policy['rate_limit']}/min")
    if policy.get("deny_labels"):
        parts.append("deny=" + ",".join(policy["deny_labels"]))
    return " ".join(parts) or "-"
