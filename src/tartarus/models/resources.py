"""Resource limits and network modes shared by templates and sandbox specs."""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field


class NetworkMode(enum.StrEnum):
    NONE = "none"  # a private netns with only a loopback: the default
    ALLOWLIST = "allowlist"
    OPEN = "open"


class Isolation(enum.StrEnum):
    """How strongly a runtime separates a sandbox from the host kernel, weakest first."""

    CONTAINER = "container"  # namespaces, cgroups, seccomp on the host kernel (crun, runc)
    USER_KERNEL = "user-kernel"  # a kernel in user space between it and the host (gVisor)
    VM = "vm"  # its own kernel under a hypervisor or an emulator (microvm)

    @property
    def rank(self) -> int:
        return list(Isolation).index(self)


class Resources(BaseModel):
    """Per-sandbox limits. Bounds are sanity limits for one host, not policy (that is Themis)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float = Field(1.0, gt=0, le=256, description="CPU cores (fractions allowed)")
    memory_mb: int = Field(512, ge=16, le=1024 * 1024, description="memory limit in MiB")
    pids: int = Field(256, ge=8, le=1_000_000, description="max processes and threads")
    disk_mb: int = Field(1024, ge=1, le=1024 * 1024, description="writable layer size in MiB")
