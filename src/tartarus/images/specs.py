"""Loading template specs from YAML, so a bad file fails with one line naming the file and field.

Built-in specs ship as package data next to this module; they are read once per process.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tartarus.errors import InvalidRequestError
from tartarus.models.template import TemplateSpec

BUILTIN_DIR = Path(__file__).parent / "builtin"
DEFAULT_TEMPLATE = "python"


def _format_validation(origin: str, err: ValidationError) -> str:
    errors = err.errors()
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"]) or "(document)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{origin}: field '{field}': {msg}{more}"


def parse_spec(data: Any, *, origin: str, default_name: str | None = None) -> TemplateSpec:
    """Validate an already-parsed YAML/JSON document; `origin` names it in error messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidRequestError(
            f"{origin}: expected a mapping of fields, got {type(data).__name__}"
        )
    if default_name is not None and "name" not in data:
        data = {**data, "name": default_name}
    try:
        return TemplateSpec.model_validate(data)
    except ValidationError as err:
        raise InvalidRequestError(_format_validation(origin, err)) from None


def load_spec_file(path: Path | str) -> TemplateSpec:
    """Read one template YAML file. A missing `name` defaults to the file's stem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidRequestError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidRequestError(f"{path}: cannot read: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InvalidRequestError(f"{path}: invalid YAML{where}: {problem}") from None
    return parse_spec(data, origin=str(path), default_name=path.stem)


@functools.cache
def _load_builtins() -> tuple[TemplateSpec, ...]:
    specs = [load_spec_file(p) for p in sorted(BUILTIN_DIR.glob("*.yaml"))]
    return tuple(specs)


def builtin_specs() -> dict[str, TemplateSpec]:
    """The templates that ship with Tartarus, by name (a fresh dict each call)."""
    return {spec.name: spec for spec in _load_builtins()}
