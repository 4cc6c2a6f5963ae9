"""Option parsing shared by commands that describe a sandbox (run now; create later)."""

from __future__ import annotations

from typing import Any

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
