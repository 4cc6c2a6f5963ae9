"""Template specs (Erebus): the small YAML document a rootfs is built from.

The content hash covers everything that changes the built rootfs, so an unchanged spec is
never rebuilt; fields that only matter at run time (env, workdir, resources, the termination
grace) are excluded, so editing them does not force a rebuild either.
"""

from __future__ import annotations

import hashlib
import json
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tartarus.models.resources import Resources

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
BUILD_FORMAT = 1  # bump when the builder changes what it produces for the same spec


class TemplateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    suite: str = "bookworm"
    apt: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = "/home/user"
    files: dict[str, str] = Field(default_factory=dict, description="absolute path -> content")
    preimport: tuple[str, ...] = ()
    resources: Resources = Field(default_factory=Resources)
    termination_grace_s: float | None = Field(
        None, ge=0, le=3600, description="SIGTERM-to-kill grace of `terminate` (None: config)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must be 1-63 chars of a-z, 0-9, '.', '_' or '-'")
        return v

    @field_validator("files")
    @classmethod
    def _files(cls, v: dict[str, str]) -> dict[str, str]:
        for path in v:
            if not path.startswith("/") or ".." in path.split("/"):
                raise ValueError(f"file path {path!r} must be absolute without '..'")
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path")
        return v

    def content_hash(self) -> str:
        build_inputs = {
            "format": BUILD_FORMAT,
            "suite": self.suite,
            "apt": sorted(self.apt),
            "pip": sorted(self.pip),
            "files": self.files,
        }
        blob = json.dumps(build_inputs, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]
