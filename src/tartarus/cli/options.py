"""Option parsing shared by commands that describe a sandbox (run now; create later)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from tartarus.errors import InvalidRequestError
from tartarus.models import Resources


def parse_env(values: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


def resources(base: Resources, **overrides: Any) -> Resources:
    """The template's defaults with the given options applied; one readable error line."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Resources.model_validate({**base.model_dump(), **given})
    except ValidationError as exc:
        raise InvalidRequestError(validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "value"
    flag = {
        "cpu": "--cpu",
        "memory_mb": "--memory",
        "pids": "--pids",
        "disk_mb": "--disk",
        "timeout": "--timeout",
        "workdir": "--workdir",
        "env": "--env",
    }.get(field, field)
    return f"invalid {flag}: {err['msg'].removeprefix('Value error, ')}"


F = TypeVar("F", bound=Callable[..., Any])

# runtime names are listed here, not imported from the registry, so `--help` stays cheap
RUNTIME_NAMES = ("auto", "crun", "runc", "gvisor", "microvm")


def sandbox_options(func: F) -> F:
    """The options that describe a new sandbox, shared by `run` and `create`."""
    decorators = [
        click.option(
            "--template", "-t", default="python", show_default=True, help="Template name."
        ),
        click.option(
            "--runtime",
            type=click.Choice(RUNTIME_NAMES),
            default=None,
            help="Isolation runtime (default: the best that works here).",
        ),
        click.option("--cpu", type=float, default=None, help="CPU cores, e.g. 0.5."),
        click.option("--memory", type=int, default=None, metavar="MIB", help="Memory in MiB."),
        click.option("--pids", type=int, default=None, metavar="N", help="Max processes."),
        click.option("--disk", type=int, default=None, metavar="MIB", help="Disk in MiB."),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=300.0,
            show_default=True,
            metavar="SECONDS",
            help="Wall-clock limit; the sandbox is killed after it.",
        ),
        click.option(
            "--env", "-e", multiple=True, metavar="K=V", help="Environment variable (repeatable)."
        ),
        click.option(
            "--workdir", "-w", default=None, metavar="PATH", help="Working directory inside."
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def snapshot_option(func: F) -> F:
    """`--snapshot SNAP` for `run` and `create`: start from a snapshot's files."""
    return click.option(
        "--snapshot",
        default=None,
        metavar="SNAP",
        help="Start from this snapshot's files (id or name); the template is the snapshot's.",
    )(func)


def seccomp_option(func: F) -> F:
    """`--seccomp NAME`: the sandbox's seccomp profile (Typhon)."""
    return click.option(
        "--seccomp",
        default=None,
        metavar="NAME",
        help="Seccomp profile: default, strict or a generated one (`tartarus seccomp ls`).",
    )(func)


NETWORK_MODES = ("none", "allowlist", "open")


def network_options(func: F) -> F:
    """`--network MODE` and `--allow RULE` (Styx) for a new sandbox."""
    func = click.option(
        "--allow",
        "allow",
        multiple=True,
        metavar="RULE",
        help="With --network allowlist: a CIDR or domain it may reach (pypi.org,"
        " *.github.com); repeatable.",
    )(func)
    return click.option(
        "--network",
        type=click.Choice(NETWORK_MODES),
        default="none",
        show_default=True,
        help="none: no route out; allowlist: only --allow rules; open: anything but the host,"
        " cloud metadata and private ranges.",
    )(func)


def parse_rules(rules: tuple[str, ...]) -> None:
    """Egress rules checked as the engine checks them (a bad one is InvalidRequestError)."""
    from tartarus.node.egress import parse_rules as check

    check(rules)


def template_for(template: str, snapshot: str | None) -> str | None:
    """The template to ask for: None (the snapshot's own) unless --template was given."""
    ctx = click.get_current_context(silent=True)
    given = ctx is not None and ctx.get_parameter_source("template") not in (
        None,
        click.core.ParameterSource.DEFAULT,
    )
    return template if snapshot is None or given else None
