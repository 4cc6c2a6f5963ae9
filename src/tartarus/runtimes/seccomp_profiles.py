"""Named seccomp profiles: the built-in `default` and `strict`, and generated ones on disk.

A sandbox names its profile (`SandboxSpec.seccomp`); the engine resolves the name here at
create, so an unknown name is a 400 before anything starts. Generated allow-list profiles
(`tartarus seccomp generate`) are plain OCI seccomp JSON in `<state>/seccomp/<name>.json`,
so an operator can read, edit or copy them; a file that is not a profile is refused when
used, not silently replaced by the default.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tartarus.errors import InvalidRequestError, NotFoundError
from tartarus.runtimes.seccomp import default_profile, strict_profile

DEFAULT = "default"
STRICT = "strict"
BUILTIN = {DEFAULT: default_profile, STRICT: strict_profile}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
ACTIONS = {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS"}


@dataclass(frozen=True)
class ProfileInfo:
    name: str
    builtin: bool
    default_action: str
    rules: int  # syscall names with a rule of their own
    path: Path | None  # None for a built-in one


class SeccompProfiles:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "seccomp"

    def check_name(self, name: str) -> str:
        if not NAME_RE.match(name):
            raise InvalidRequestError(
                f"seccomp profile name {name!r}: use lowercase letters, digits, '.', '_', '-'"
            )
        return name

    def path(self, name: str) -> Path:
        return self.dir / f"{self.check_name(name)}.json"

    def resolve(self, name: str | None) -> dict[str, Any]:
        """The OCI profile `name` stands for (None: the default)."""
        if name is None or name in BUILTIN:
            return BUILTIN[name or DEFAULT]()
        path = self.path(name)
        try:
            profile = json.loads(path.read_text())
        except FileNotFoundError:
            known = ", ".join(info.name for info in self.list())
            raise InvalidRequestError(
                f"unknown seccomp profile {name!r} (known: {known})"
            ) from None
        except (OSError, ValueError) as exc:
            raise InvalidRequestError(f"seccomp profile {name!r} is unreadable: {exc}") from None
        _validate(name, profile)
        return dict(profile)

    def save(self, name: str, profile: dict[str, Any]) -> Path:
        if name in BUILTIN:
            raise InvalidRequestError(f"{name!r} is a built-in seccomp profile")
        _validate(name, profile)
        path = self.path(name)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(profile, indent=1) + "\n")
        os.replace(tmp, path)  # a concurrent create reads the old one or the new one
        return path

    def delete(self, name: str) -> None:
        if name in BUILTIN:
            raise InvalidRequestError(f"{name!r} is a built-in seccomp profile")
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            raise NotFoundError(f"no seccomp profile {name!r}") from None

    def info(self, name: str) -> ProfileInfo:
        profile = self.resolve(name)
        path = None if name in BUILTIN else self.path(name)
        return _info(name, profile, path)

    def list(self) -> list[ProfileInfo]:
        out = [_info(n, make(), None) for n, make in BUILTIN.items()]
        if self.dir.is_dir():
            for path in sorted(self.dir.glob("*.json")):
                try:
                    profile = json.loads(path.read_text())
                    _validate(path.stem, profile)
                except (OSError, ValueError, InvalidRequestError):
                    continue  # a broken file is named when someone uses it
                out.append(_info(path.stem, profile, path))
        return out


def _info(name: str, profile: dict[str, Any], path: Path | None) -> ProfileInfo:
    names = {n for rule in profile.get("syscalls", []) for n in rule.get("names", [])}
    return ProfileInfo(name, path is None, profile["defaultAction"], len(names), path)


def _validate(name: str, profile: Any) -> None:
    """Enough structure that the runtime gets a profile, not a surprise at start."""
    if not isinstance(profile, dict) or profile.get("defaultAction") not in ACTIONS:
        raise InvalidRequestError(f"seccomp profile {name!r}: no valid defaultAction")
    rules = profile.get("syscalls", [])
    if not isinstance(rules, list) or not all(
        isinstance(r, dict)
        and r.get("action") in ACTIONS
        and isinstance(r.get("names"), list)
        and all(isinstance(n, str) for n in r["names"])
        for r in rules
    ):
        raise InvalidRequestError(f"seccomp profile {name!r}: malformed syscalls")
