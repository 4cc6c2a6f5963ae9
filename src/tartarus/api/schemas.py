"""Wire shapes of the API (docs/api.md), separate from the engine's records on purpose: the
engine may grow fields without the public contract changing under the SDK's feet."""

from __future__ import annotations

import base64
import binascii
import enum
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tartarus.config import MAX_GRACE_S
from tartarus.errors import InvalidRequestError
from tartarus.models import NetworkMode, Resources, Sandbox, SandboxState
from tartarus.node.egress import MAX_RULES, parse_rules

# Longer is no use, and far longer overflows clocks and poll timeouts in the engine and the
# guest (schemathesis found code timeouts of 2.4e16 s and of 1.1e7 s answered with a 502:
# "timestamp too large", "timeout is too large"; poll() takes int32 milliseconds: 24.8 days).
MAX_TIMEOUT_S = 365 * 24 * 3600.0  # a sandbox's lifetime
MAX_COMMAND_TIMEOUT_S = 24 * 3600.0  # one exec or code cell


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _egress_rules(v: list[str]) -> list[str]:
    try:
        parse_rules(v)
    except InvalidRequestError as exc:
        raise ValueError(str(exc)) from None
    return v


EGRESS_DOC = (
    "allowlist mode: CIDRs (`10.1.2.0/24`) and domain names (`pypi.org`, `*.github.com`)"
    " the sandbox may reach; DNS answers only these names"
)


class CreateSandbox(_In):
    template: str = "python"
    command: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    cpu: float | None = None
    memory_mb: int | None = None
    pids: int | None = None
    disk_mb: int | None = None
    timeout: float = Field(300.0, gt=0, le=MAX_TIMEOUT_S, description="wall-clock seconds")
    runtime: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    snapshot: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="start from this snapshot's files (id or name); `template` defaults to"
        " the snapshot's",
    )
    seccomp: str | None = Field(
        None,
        min_length=1,
        max_length=63,
        description="seccomp profile: `default`, `strict` or a generated one (`tartarus"
        " seccomp ls`); none: `default`",
    )
    network: NetworkMode = Field(
        NetworkMode.NONE, description="none (no route out), allowlist (`egress` only) or open"
    )
    egress: list[str] = Field(default_factory=list, max_length=MAX_RULES, description=EGRESS_DOC)

    _egress = field_validator("egress")(_egress_rules)


class SetNetwork(_In):
    """A running sandbox's new network mode and rules (allowlist <-> open only)."""

    mode: NetworkMode
    egress: list[str] = Field(default_factory=list, max_length=MAX_RULES, description=EGRESS_DOC)

    _egress = field_validator("egress")(_egress_rules)


class SetTimeout(_In):
    timeout: float = Field(gt=0, le=MAX_TIMEOUT_S, description="seconds from now")


class ExecRequest(_In):
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = Field(None, gt=0, le=MAX_COMMAND_TIMEOUT_S)
    stdin: str | None = Field(None, description="base64 of the bytes fed to stdin")

    @field_validator("stdin")
    @classmethod
    def _stdin(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("must be base64") from None
        return v

    def stdin_bytes(self) -> bytes | None:
        return None if self.stdin is None else base64.b64decode(self.stdin)


class CodeRequest(_In):
    code: str
    context: str | None = None
    timeout: float | None = Field(None, gt=0, le=MAX_COMMAND_TIMEOUT_S)


class CodeErrorOut(BaseModel):
    name: str
    value: str
    traceback: str


class CodeOut(BaseModel):
    stdout: str
    stderr: str
    value: str | None
    error: CodeErrorOut | None


class Event(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    ts: datetime
    kind: str = "state"  # state | admission | enforcement | network ...
    from_: str | None = Field(None, alias="from")
    to: str | None = None  # the new state (state events only)
    reason: str | None = None
    data: dict[str, Any] | None = None  # the details of a non-state event

    @field_validator("ts")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v if v.tzinfo is not None else v.replace(tzinfo=UTC)  # SQLite drops the zone


class SandboxOut(BaseModel):
    id: str
    tenant: str | None
    state: SandboxState
    template: str
    runtime: str
    command: list[str]
    env: dict[str, str]
    workdir: str | None
    metadata: dict[str, str]
    resources: Resources
    timeout: float
    exit_code: int | None
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    timings_ms: dict[str, float]
    hibernated_at: datetime | None = None
    checkpoint_bytes: int | None = Field(
        None, description="bytes on disk while hibernated: memory image and writable layer"
    )
    snapshot: str | None = Field(None, description="the snapshot it was started from")
    network: NetworkMode = NetworkMode.NONE
    egress: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, sb: Sandbox) -> SandboxOut:
        return cls(
            id=sb.id,
            tenant=sb.tenant,
            state=sb.state,
            template=sb.spec.template,
            runtime=sb.runtime,
            command=list(sb.spec.command),
            env=dict(sb.spec.env),
            workdir=sb.spec.workdir,
            metadata=dict(sb.spec.metadata),
            resources=sb.resources,
            timeout=sb.spec.timeout,
            exit_code=sb.exit_code,
            reason=sb.reason,
            created_at=sb.created_at,
            started_at=sb.started_at,
            finished_at=sb.finished_at,
            timings_ms=dict(sb.timings_ms),
            hibernated_at=sb.hibernated_at,
            checkpoint_bytes=sb.checkpoint_bytes,
            snapshot=sb.spec.snapshot,
            network=sb.spec.network,
            egress=list(sb.spec.egress),
        )


class SandboxDetail(SandboxOut):
    events: list[Event]

    @classmethod
    def with_events(cls, sb: Sandbox, events: list[dict[str, Any]]) -> SandboxDetail:
        base = SandboxOut.of(sb).model_dump()
        return cls(**base, events=[Event.model_validate(e) for e in events])


class SandboxPage(BaseModel):
    items: list[SandboxOut]
    next_cursor: str | None


class StateFilter(enum.StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    HIBERNATED = "hibernated"
    EXITED = "exited"
    FAILED = "failed"
    KILLED = "killed"
    TIMED_OUT = "timed_out"
    OOM_KILLED = "oom_killed"
    ALL = "all"


class FileWritten(BaseModel):
    path: str
    size: int


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    type: str
    size: int | None = None
    mode: int | None = None
    mtime: float | None = None


class FileList(BaseModel):
    entries: list[FileEntry]


class TemplateOut(BaseModel):
    name: str
    source: str
    built: bool
    image: str | None
    description: str
    resources: Resources


class TemplateDetail(TemplateOut):
    spec: dict[str, Any]


class TemplateList(BaseModel):
    items: list[TemplateOut]


class CreateTenant(_In):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")


class TenantOut(BaseModel):
    name: str
    created_at: datetime


class TenantList(BaseModel):
    items: list[TenantOut]


class CreateKey(_In):
    tenant: str
    role: Literal["admin", "member"] = "member"
    name: str = Field("", max_length=128)


class KeyOut(BaseModel):
    id: str
    tenant: str
    role: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


class NewKey(KeyOut):
    key: str


class KeyList(BaseModel):
    items: list[KeyOut]


class Terminate(_In):
    grace: float | None = Field(
        None,
        ge=0,
        le=MAX_GRACE_S,
        description="seconds between SIGTERM and the kill (default: the template's, else the"
        " server's)",
    )
    checkpoint: bool = Field(
        False,
        description="snapshot the sandbox first (its files, and its memory where the runtime"
        " can); the final reason names the snapshot. 409 if it cannot be snapshotted",
    )


class RuntimeCapabilities(BaseModel):
    pause: bool
    checkpoint: bool
    userns: bool
    network_modes: list[str]
    exec_channel: str
    missing: dict[str, str] = Field(description="capability -> why it is not available here")


class RuntimeOut(BaseModel):
    name: str
    available: bool
    default: bool = Field(description="the runtime a sandbox gets when it names none")
    version: str
    reason: str | None = Field(description="why it does not work here")
    hint: str | None = Field(description="what to install or change")
    detail: str | None = Field(None, description="more, e.g. a microvm's accelerator and why")
    capabilities: RuntimeCapabilities


class RuntimeList(BaseModel):
    items: list[RuntimeOut]


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorBody(BaseModel):
    """The one error shape (docs/api.md)."""

    error: ErrorDetail


# Explicitly `application/json`, not `"model": ErrorBody`: FastAPI files a model under the
# route's own media type, which made streaming routes document their JSON errors as
# `text/event-stream` (found by schemathesis). `ErrorBody` is in the components because a
# route uses it as a model (files: 413).
ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": ERROR_CONTENT}
    for status, text in (
        (400, "Invalid request"),
        (401, "Missing, malformed, unknown or revoked key"),
        (403, "The key's role may not do this"),
        (404, "Not found for this tenant"),
        (409, "The sandbox's state does not allow it"),
        (422, "Validation error naming the field"),
    )
}
