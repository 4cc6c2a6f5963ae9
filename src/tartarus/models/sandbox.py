"""Sandbox specs, records and the lifecycle state machine.

A sandbox moves pending -> starting -> running and ends in exactly one terminal state.
A running sandbox may be paused (frozen, memory kept) and resumed any number of times; a
paused one can end directly (a kill thaws it first). A running or paused sandbox may be
hibernated (memory and writable layer on disk, nothing running) and woken back to running; a
hibernated one can end directly too (its files on disk are removed). Every writer goes through
`check_transition`, so a record can never jump backwards or leave a terminal state (the
original overwrote its run records and lost final states).
"""

from __future__ import annotations

import enum
import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tartarus.models.enforcement import Enforcement
from tartarus.models.resources import Isolation, NetworkMode, Resources

ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SandboxState(enum.StrEnum):
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


TERMINAL_STATES = frozenset(
    {
        SandboxState.EXITED,
        SandboxState.FAILED,
        SandboxState.KILLED,
        SandboxState.TIMED_OUT,
        SandboxState.OOM_KILLED,
    }
)

_ENDINGS = TERMINAL_STATES
_ALLOWED: dict[SandboxState, frozenset[SandboxState]] = {
    SandboxState.PENDING: frozenset(
        {SandboxState.STARTING, SandboxState.FAILED, SandboxState.KILLED}
    ),
    SandboxState.STARTING: frozenset({SandboxState.RUNNING}) | _ENDINGS,
    SandboxState.RUNNING: frozenset({SandboxState.PAUSED, SandboxState.HIBERNATED}) | _ENDINGS,
    SandboxState.PAUSED: frozenset({SandboxState.RUNNING, SandboxState.HIBERNATED}) | _ENDINGS,
    SandboxState.HIBERNATED: frozenset({SandboxState.RUNNING}) | _ENDINGS,
}


class IllegalTransition(ValueError):
    def __init__(self, current: SandboxState, target: SandboxState) -> None:
        super().__init__(f"illegal sandbox transition {current.value} -> {target.value}")
        self.current = current
        self.target = target


def check_transition(current: SandboxState, target: SandboxState) -> None:
    if target not in _ALLOWED.get(current, frozenset()):
        raise IllegalTransition(current, target)


class SandboxSpec(BaseModel):
    """What a caller asks for. `command` empty means: keep the sandbox up for exec calls."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str = "python"
    command: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    resources: Resources | None = None  # None: the template's defaults
    timeout: float = Field(300.0, gt=0, le=7 * 24 * 3600, description="wall-clock seconds")
    network: NetworkMode = NetworkMode.NONE
    # allowlist mode: CIDRs ("10.0.0.0/8", "192.0.2.1") and domain names ("pypi.org",
    # "*.github.com") this sandbox may reach (Styx, node/network)
    egress: tuple[str, ...] = ()
    runtime: str | None = None  # None or "auto": the fastest that works and is strong enough
    isolation: Isolation | None = None  # the weakest isolation acceptable (policy, quarantine)
    seccomp: str | None = None  # seccomp profile name; None: the default deny-list profile
    enforcement: Enforcement | None = None  # Erinyes' watch limits, set by admission (policy)
    # why admission quarantined it (Typhon): strongest runtime, strict seccomp, no network
    quarantine: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    # start from this snapshot's files (id or name; the engine stores the id): its layer is
    # an extra read-only lower below the sandbox's own writable layer (node/snapshots.py)
    snapshot: str | None = Field(None, min_length=1, max_length=128)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not ENV_KEY_RE.match(key):
                raise ValueError(f"invalid environment variable name {key!r}")
            if "\0" in value:
                raise ValueError(f"environment variable {key} contains a NUL byte")
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("must be an absolute path")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any("\0" in arg for arg in v):
            raise ValueError("command arguments must not contain NUL bytes")
        return v


class Sandbox(BaseModel):
    """The lifecycle record of one sandbox, as stored and as shown to users."""

    model_config = ConfigDict(extra="forbid")

    id: str
    tenant: str | None = None  # None: the embedded engine's own, no tenant
    spec: SandboxSpec
    state: SandboxState = SandboxState.PENDING
    runtime: str
    image: str  # content hash of the template image
    resources: Resources
    exit_code: int | None = None
    reason: str | None = None  # why it ended, e.g. "timeout", "memory", "killed by user"
    created_at: datetime
    started_at: datetime | None = None
    expires_at: datetime | None = None  # the wall-clock deadline; `set_timeout` moves it
    # set while paused or hibernated: the timeout stopped counting then, with
    # `expires_at - paused_at` left
    paused_at: datetime | None = None
    hibernated_at: datetime | None = None
    checkpoint_bytes: int | None = None  # on disk while hibernated: memory image + layer
    finished_at: datetime | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    pool: str | None = None  # waiting, unclaimed, in the warm pool of this template

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def transition(self, target: SandboxState) -> None:
        check_transition(self.state, target)
        self.state = target
