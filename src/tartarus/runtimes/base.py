"""The unified runtime interface: every isolation technology behind one lifecycle.

An adapter declares what it can do (`Capabilities`) and `probe()` says whether it works on
this host and, if not, why and what to install; the probe also tries the optional parts
(pause, checkpoint/restore), so `probed_capabilities` reports what really works here.
Anything it cannot do raises `CapabilityError` naming the runtime and the capability; nothing
pretends. Runtimes know nothing of the store or the API: they get a `ContainerConfig` and a
bundle directory.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tartarus.errors import CapabilityError
from tartarus.models import ExecResult, Isolation, Resources


class ContainerStatus(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Capabilities:
    isolation: Isolation = Isolation.CONTAINER  # `--runtime auto` picks by this, then speed
    pause: bool = False  # freeze every process keeping memory (cgroup freezer, runsc pause)
    checkpoint: bool = False  # memory to disk and back (hibernate)
    userns: bool = False
    exec_channel: str = "agent"  # our guest agent; "runtime exec" serves python-less images
    network_modes: tuple[str, ...] = ("none", "allowlist", "open")  # Styx, on every runtime


@dataclass(frozen=True)
class ProbeResult:
    works: bool
    version: str = ""
    reason: str = ""  # why it does not work
    hint: str = ""  # what to install or change
    pause: bool = False  # a probe sandbox was really paused and resumed
    pause_error: str = ""  # why not, if the runtime declares pause
    checkpoint: bool = False  # a probe sandbox was really checkpointed and restored
    checkpoint_error: str = ""  # why not
    detail: str = ""  # what else doctor shows (microvm: the accelerator, and why not KVM)


@dataclass(frozen=True)
class BindMount:
    source: Path
    destination: str
    readonly: bool = True


@dataclass(frozen=True)
class GuestNetwork:
    """The address a sandbox has inside its netns (Styx). Containers get it with the netns
    itself; a VM's kernel has its own stack, so its init sets these on the guest's NIC."""

    address: str
    prefix: int
    gateway: str
    nameserver: str


@dataclass
class ContainerConfig:
    """Everything a runtime needs to start one sandbox's init process."""

    id: str
    rootfs: Path
    args: list[str]
    env: dict[str, str]
    cwd: str
    resources: Resources
    uid: int = 1000
    gid: int = 1000
    hostname: str = "sandbox"
    binds: list[BindMount] = field(default_factory=list)
    pass_fds: list[int] = field(default_factory=list)  # become fds 3, 4, ... inside
    netns: Path | None = None  # join this network namespace (Styx); None: a new one, lo only
    network: GuestNetwork | None = None  # the sandbox's address in `netns`
    seccomp: dict[str, Any] | None = None  # an OCI seccomp profile; None: the default one


class Runtime(abc.ABC):
    name: str
    capabilities: Capabilities
    # a checkpoint cannot save a host socket (CRIU): the engine moves the guest agent off its
    # host listening socket around one (node/parking.py)
    needs_agent_parking: bool = False
    # whether a checkpoint works for a sandbox in a network namespace of ours (Styx)
    checkpoints_with_network: bool = True
    # the sandbox writes to the host's overlay layer (containers), which files snapshots
    # copy; a VM writes to its own disk image instead
    files_on_host: bool = True

    def __init__(self, root: Path) -> None:
        self.root = root  # the runtime's own state lives here, apart from other users'

    def probed_capabilities(self, probe: ProbeResult) -> Capabilities:
        """The declared capabilities, minus those this host's probe could not confirm."""
        declared = self.capabilities
        return dataclasses.replace(
            declared,
            pause=declared.pause and probe.works and probe.pause,
            checkpoint=declared.checkpoint and probe.works and probe.checkpoint,
        )

    @abc.abstractmethod
    async def probe(self) -> ProbeResult: ...

    @abc.abstractmethod
    async def start(self, config: ContainerConfig, bundle: Path, log: Path) -> int:
        """Create and start the container detached, return its init's host pid.

        The init's stdout/stderr go to `log`.
        """

    @abc.abstractmethod
    async def status(self, container_id: str) -> ContainerStatus | None:
        """The container's status, or None if the runtime does not know it."""

    @abc.abstractmethod
    async def kill(self, container_id: str, signal: int = 9) -> None: ...

    @abc.abstractmethod
    async def delete(self, container_id: str) -> None:
        """Remove the container (killing it first, thawing it if paused); a missing one is not
        an error."""

    @abc.abstractmethod
    async def list_ids(self) -> list[str]:
        """Ids of the containers this runtime holds in our state root."""

    resizable: bool = False  # `resize` can change a running container's cgroup limits

    async def resize(self, container_id: str, resources: Resources, bundle: Path) -> None:
        """Set the running container's memory, CPU and pids limits (a warm pool's sandbox
        handed to a request that asked for less)."""
        raise CapabilityError(self.name, "resize", "it cannot change a running sandbox's limits")

    async def exec(
        self,
        container_id: str,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        uid: int,
        gid: int,
        stdin: bytes | None = None,
        on_stdout: Callable[[bytes], Awaitable[None]],
        on_stderr: Callable[[bytes], Awaitable[None]],
        timeout: float | None = None,
    ) -> ExecResult:
        """Run a process through the runtime (for images that cannot run the guest agent)."""
        raise CapabilityError(self.name, "exec without the guest agent")

    async def pause(self, container_id: str) -> None:
        """Freeze every process of the container; memory stays as it is."""
        raise CapabilityError(self.name, "pause")

    async def resume(self, container_id: str) -> None:
        """Thaw a paused container."""
        raise CapabilityError(self.name, "resume")

    async def checkpoint(self, container_id: str, image_dir: Path) -> None:
        """Write every process's memory and state to `image_dir`; the container is gone
        afterwards (deleted, its cgroups removed). The root filesystem is the caller's."""
        raise CapabilityError(self.name, "checkpoint")

    async def restore(
        self, config: ContainerConfig, bundle: Path, log: Path, image_dir: Path
    ) -> int:
        """Bring a checkpointed container back from `image_dir` (same id, bundle and rootfs
        path as at its start; `config.pass_fds` as for `start`); returns the init's pid."""
        raise CapabilityError(self.name, "restore")
