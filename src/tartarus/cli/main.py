"""The `tartarus` command. Each command group lives in its own module (Modal style).

Errors end as one readable line on stderr: usage and bad input exit 2, anything else 1;
a sandbox's own exit code is passed through by `run`.
"""

from __future__ import annotations

import sys

import click

from tartarus import __version__
from tartarus.cli.doctor import doctor
from tartarus.cli.run import run
from tartarus.cli.template import template
from tartarus.errors import InvalidRequestError, NotFoundError, TartarusError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tartarus")
def cli() -> None:
    """Tartarus runs untrusted code in isolated sandboxes.

    Without TARTARUS_URL, commands use the embedded engine on this machine (run as root).
    """


cli.add_command(run)
cli.add_command(doctor)
cli.add_command(template)


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
