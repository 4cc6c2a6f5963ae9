"""Policies from a file: `tartarus policy apply FILE` and TARTARUS_POLICIES_FILE at start.

YAML or JSON (JSON is YAML), one policy or a list of them. At server start a policy whose
content equals the version in force is not applied again, so restarting a server does not
add a version per restart; a changed one becomes the next version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tartarus.errors import InvalidRequestError, NotFoundError
from tartarus.models.policy import Policy
from tartarus.store.policies import PolicyRepository


def parse(text: str, *, source: str = "policy file") -> list[Policy]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidRequestError(f"{source} is not YAML or JSON: {exc}") from None
    items: list[Any] = data if isinstance(data, list) else [data]
    policies = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequestError(f"{source}: item {i + 1} is not a mapping")
        try:
            policies.append(Policy.model_validate(item))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "policy"
            name = item.get("name", f"item {i + 1}")
            message = str(err["msg"]).removeprefix("Value error, ")
            raise InvalidRequestError(f"{source}: policy {name}: {where}: {message}") from None
    return policies


def load(path: Path) -> list[Policy]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidRequestError(f"cannot read policy file {path}: {exc.strerror}") from None
    return parse(text, source=str(path))


def apply_unchanged_skipped(
    repo: PolicyRepository, policies: list[Policy], *, actor: str
) -> list[Policy]:
    """Apply each policy unless the version in force has the same content."""
    applied = []
    for policy in policies:
        try:
            current = repo.get(policy.name)
        except NotFoundError:
            current = None
        if current is not None and _content(current) == _content(policy):
            continue
        applied.append(repo.apply(policy, actor=actor))
    return applied


def _content(policy: Policy) -> dict[str, Any]:
    return policy.model_dump(mode="json", exclude={"version"})
