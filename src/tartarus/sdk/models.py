"""What the SDK returns: small pydantic models of the API's JSON. They ignore unknown fields,
so an older SDK keeps working against a newer server."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ApiKey",
    "CommandResult",
    "Execution",
    "ExecutionError",
    "FileEntry",
    "LogEvent",
    "Pool",
    "SandboxEvent",
    "SandboxInfo",
    "SandboxResources",
    "SnapshotInfo",
    "Tenant",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class SandboxResources(_Model):
    cpu: float
    memory_mb: int
    pids: int
    disk_mb: int


class SandboxEvent(_Model):
    """One event: a state change (`from_` is None for the first) or, with another `kind`,
    an admission decision, an enforcement action or a network change, with its `data`."""

    ts: datetime
    kind: str = "state"
    from_: str | None = Field(None, alias="from")
    to: str | None = None
    reason: str | None = None
    data: dict[str, Any] | None = None


class SandboxInfo(_Model):
    id: str
    tenant: str | None = None
    state: str
    template: str
    runtime: str
    command: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    resources: SandboxResources
    timeout: float
    exit_code: int | None = None
    reason: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    hibernated_at: datetime | None = None
    checkpoint_bytes: int | None = None  # on disk while hibernated
    snapshot: str | None = None  # the snapshot it was started from
    network: str = "none"  # none | allowlist | open
    egress: list[str] = Field(default_factory=list)  # allowlist rules
    events: list[SandboxEvent] | None = None  # only from a single-sandbox GET


class CommandResult(_Model):
    exit_code: int
    stdout: str = ""
    stderr: str = ""
    signal: int | None = None
    timed_out: bool = False


class ExecutionError(_Model):
    name: str
    value: str
    traceback: str = ""


class Execution(_Model):
    """Outcome of `run_code`: printed output, repr of the last expression, or the error."""

    stdout: str = ""
    stderr: str = ""
    value: str | None = None
    error: ExecutionError | None = None


class FileEntry(_Model):
    name: str
    type: str
    size: int = 0
    mode: int | None = None
    mtime: float | datetime | None = None


class LogEvent(_Model):
    """A chunk of the main command's output; `id` resumes a stream (`logs(after=id)`)."""

    stream: Literal["stdout", "stderr"]
    data: bytes
    id: int | None = None

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


class Tenant(_Model):
    name: str
    created_at: datetime | None = None


class ApiKey(_Model):
    id: str
    tenant: str
    role: str
    name: str | None = None
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    key: str | None = None  # the secret: only in the answer that created it


class Pool(_Model):
    """A template's warm pool: its settings and how it is doing."""

    template: str
    runtime: str | None = None
    min: int
    max: int
    target: int
    ready: int
    starting: int
    in_use: int
    hits: int
    misses: int
    hit_rate: float | None = None
    last_error: str | None = None


class SnapshotInfo(_Model):
    """A sandbox's saved files and, with `memory`, its processes: `Sandbox.create(snapshot=)`
    starts new sandboxes from it."""

    id: str
    name: str | None = None
    template: str
    image: str
    runtime: str
    resources: SandboxResources
    source: str
    parent: str | None = None
    size_bytes: int
    memory: bool = False
    created_at: datetime
