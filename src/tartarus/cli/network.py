"""`tartarus network set ID --mode MODE --allow RULE...`: change a running sandbox's network.

Styx's run-time change (node/network_set.py): `allowlist` <-> `open` and new egress rules,
through a server when `TARTARUS_URL` is set, else the embedded engine. Prints the sandbox's
new network as one line; a bad rule exits 2, a sandbox that cannot change (created with
`none`, or asked for `none`) exits 1, each with one `error:` line.
"""

from __future__ import annotations

import click

from tartarus.cli.backend import Backend, EmbeddedBackend, RemoteBackend, run
from tartarus.cli.options import NETWORK_MODES, parse_rules


@click.group()
def network() -> None:
    """Change the network of running sandboxes (Styx)."""


@network.command("set")
@click.argument("sandbox_id")
@click.option(
    "--mode",
    required=True,
    type=click.Choice(NETWORK_MODES[1:]),
    help="allowlist (only --allow rules) or open (anything but host, metadata, private).",
)
@click.option(
    "--allow",
    "rules",
    multiple=True,
    metavar="RULE",
    help="Allowed CIDR or domain (pypi.org, *.github.com); repeatable; replaces the old ones.",
)
def set_(sandbox_id: str, mode: str, rules: tuple[str, ...]) -> None:
    """Set SANDBOX_ID's network mode and egress rules (new connections follow them)."""
    parse_rules(rules)  # a bad rule is exit 2 before anything is contacted

    async def body(backend: Backend) -> tuple[str, list[str]]:
        if isinstance(backend, RemoteBackend):
            from tartarus.sdk import _api

            await backend.client.call(_api.set_network(sandbox_id, mode, rules))
            return mode, list(rules)
        assert isinstance(backend, EmbeddedBackend)
        from tartarus.control import permissions, submit
        from tartarus.models import NetworkMode
        from tartarus.node.network_set import set_network

        engine, wanted = backend.engine, NetworkMode(mode)
        sandbox = engine.get(sandbox_id)
        permissions.require_network(engine, sandbox, wanted, rules, actor=submit.CLI_ACTOR)
        sandbox = await set_network(engine, sandbox_id, wanted, rules, actor=submit.CLI_ACTOR)
        return sandbox.spec.network.value, list(sandbox.spec.egress)

    got_mode, got_rules = run(body)
    click.echo(f"{sandbox_id} {got_mode} {' '.join(got_rules)}".rstrip())
