"""The `tartarus` command. Each command group lives in its own module (Modal style) and is
imported only when used, so `tartarus run` does not pay for the others' imports.

Errors end as one readable line on stderr: usage and bad input exit 2, anything else 1;
a sandbox's own exit code is passed through by `run`.
"""

from __future__ import annotations

import importlib
import sys

import click

from tartarus import __version__
from tartarus.errors import InvalidRequestError, NotFoundError, TartarusError

COMMANDS = {  # name -> (module, attribute, one-line help for the listing)
    "run": ("tartarus.cli.run", "run", "Run COMMAND in a new sandbox and exit with its exit code."),
    "doctor": ("tartarus.cli.doctor", "doctor", "Probe each runtime and check the host tools."),
    "template": ("tartarus.cli.template", "template", "List, build, import and remove templates."),
    "create": ("tartarus.cli.sandbox", "create", "Create a sandbox and print its id."),
    "ps": ("tartarus.cli.sandbox", "ps", "List sandboxes."),
    "inspect": ("tartarus.cli.sandbox", "inspect", "Show a sandbox as JSON, with events."),
    "exec": ("tartarus.cli.sandbox", "exec_", "Run a command in a running sandbox."),
    "logs": ("tartarus.cli.sandbox", "logs", "Show (or follow) a sandbox's main output."),
    "kill": ("tartarus.cli.sandbox", "kill", "Kill sandboxes."),
    "pause": ("tartarus.cli.lifecycle", "pause", "Freeze sandboxes, memory and timeout kept."),
    "resume": ("tartarus.cli.lifecycle", "resume", "Thaw paused sandboxes."),
    "hibernate": ("tartarus.cli.lifecycle", "hibernate", "Save sandboxes to disk, memory freed."),
    "wake": ("tartarus.cli.lifecycle", "wake", "Restore hibernated sandboxes."),
    "terminate": (
        "tartarus.cli.lifecycle",
        "terminate",
        "SIGTERM sandboxes, wait for the grace period, then kill.",
    ),
    "snapshot": ("tartarus.cli.snapshot", "snapshot", "Save a sandbox's files as a snapshot."),
    "checkpoints": (
        "tartarus.cli.snapshot",
        "checkpoints",
        "List and delete snapshots and hibernation images.",
    ),
    "keys": ("tartarus.cli.admin", "keys", "Create, list and revoke API keys (server)."),
    "tenants": ("tartarus.cli.admin", "tenants", "Create and list tenants (server)."),
    "pool": ("tartarus.cli.pool", "pool", "Set, list and remove warm pools (server)."),
    "policy": ("tartarus.cli.policy", "policy", "List, show, apply and remove policies."),
    "audit": ("tartarus.cli.audit", "audit", "List and verify the audit log."),
    "server": ("tartarus.cli.server", "server", "Serve the HTTP API with this machine's engine."),
    "bench": ("tartarus.cli.bench", "bench", "Benchmark against raw crun and host python3."),
    "seccomp": ("tartarus.cli.seccomp", "seccomp", "List, show and generate seccomp profiles."),
    "network": ("tartarus.cli.network", "network", "Change a running sandbox's network."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        command = getattr(importlib.import_module(entry[0]), entry[1])
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tartarus")
def cli() -> None:
    """Tartarus runs untrusted code in isolated sandboxes.

    With TARTARUS_URL (and TARTARUS_API_KEY) set, commands talk to a Tartarus server;
    otherwise they use the embedded engine on this machine (run as root).
    """


def main(argv: list[str] | None = None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="tartarus", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (InvalidRequestError, NotFoundError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except TartarusError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
