"""microvm: each sandbox is a QEMU `microvm` guest with its own kernel.

The isolation boundary is a virtual machine. On a host whose /dev/kvm really runs a stock
guest kernel that is hardware virtualisation; here /dev/kvm is PVM (stock kernels crawl in its
instruction emulator and die), so guests run under TCG, QEMU's software CPU: slow (boot in
seconds, Python ~10x slower) but the same isolation model. The probe decides: KVM only if a
probe guest really reaches userspace under it within a deadline, else TCG with the reason.

How a sandbox maps onto a VM (see microvm_image for the disks, microvm_channel and
guest/serial.py for the agent channel):

* the template rootfs is a read-only ext4 image, the writable layer a per-VM ext4 of
  `disk_mb` stacked by an overlayfs in the guest; the guest agent's files are a third disk;
* the guest agent is unchanged: PID 1 (guest/serial.py) starts it as the sandbox user and
  relays the engine's connections to it over one virtio-serial port;
* vCPUs and guest memory come from the resources; QEMU itself runs in the sandbox's memory
  and cpu cgroups (guest memory plus QEMU's own overhead) as an unprivileged uid outside
  the containers' id range; its NIC is on nothing, or on a tap in Styx's netns
  (microvm_net);
* QEMU daemonizes, so, like a container's init, it is re-parented to the engine (a child
  subreaper) and reaped by it; the adapter keeps its pid, QMP and agent sockets and the
  writable disk in its state dir, and `delete` removes all of them.

Sandboxes start as copy-on-write clones of a per-plan template snapshot (microvm_template);
`TARTARUS_MICROVM_CLONES=0` boots each cold. Pause, hibernation and memory snapshots are QMP
stop/cont and a migration into a file (microvm_sleep). Not yet: files-only snapshots (the
files are on the VM's disk), exec without the guest agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

from tartarus.errors import CapabilityError, InvalidRequestError, RuntimeUnavailableError
from tartarus.models import Isolation
from tartarus.runtimes import (
    cgroups,
    microvm_image,
    microvm_probe,
    microvm_qemu,
    microvm_sleep,
    microvm_template,
    reaper,
    seccomp_bpf,
    spawn,
)
from tartarus.runtimes.base import (
    Capabilities,
    ContainerConfig,
    ContainerStatus,
    ProbeResult,
    Runtime,
)
from tartarus.runtimes.bundle import CGROUP_PARENT, QEMU_UID
from tartarus.runtimes.microvm_channel import Channel
from tartarus.runtimes.microvm_qemu import QEMU, alive, read_pid

AGENT_SOCKET = "/run/tartarus/agent.sock"  # inside the guest (a tmpfs of PID 1's)
MIN_MEMORY_MB = 128  # the kernel, busybox init and a Python agent
MIN_DISK_MB = 16
PAUSED = "paused"  # in the VM's directory while QEMU is stopped
SAVED = ("state", "rw.ext4")  # what a hibernated VM is, beside the engine's files
PYTHON_PATH = re.compile(r"^/[A-Za-z0-9._+/-]+$")
RESOLV = "/etc/resolv.conf"
CACHE_SWEEP_S = 600.0


async def _move(source: Path, target: Path) -> None:
    """Rename, or copy keeping holes (a writable disk is mostly holes) across filesystems."""
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        await _copy(source, target)
        source.unlink()


async def _copy(source: Path, target: Path) -> None:
    rc, _, err = await spawn.run(["cp", "--sparse=always", str(source), str(target)])
    if rc != 0:
        raise RuntimeUnavailableError(f"microvm: cannot copy {source.name}: {err!r}")


def boot_timeout() -> float:
    """How long a cold boot may take to a ready agent (TCG on a loaded host: tens of s)."""
    return float(os.environ.get("TARTARUS_MICROVM_BOOT_TIMEOUT") or 180.0)


class MicroVMRuntime(Runtime):
    name = "microvm"
    binary = QEMU
    package = microvm_probe.PACKAGE
    files_on_host = False  # its writable layer is the VM's own disk (snapshots refuse)
    capabilities = Capabilities(
        isolation=Isolation.VM,
        pause=True,  # QMP stop/cont
        checkpoint=True,  # a migration into a file (microvm_sleep)
        userns=False,
        exec_channel="agent over virtio-serial",
        network_modes=("none", "allowlist", "open"),  # microvm_net
    )

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._channels: dict[str, Channel] = {}
        self.templates = microvm_template.Templates(root)
        self._next_sweep = 0.0

    # -- probing -------------------------------------------------------------------------------

    def probe_binaries(self) -> list[str]:
        return [QEMU, "mkfs.ext4"]

    def probe_extra_key(self) -> str:
        return microvm_image.key()

    def accelerator(self) -> str:
        return microvm_probe.accelerator(self.root)

    async def probe(self) -> ProbeResult:
        return await microvm_probe.probe(self.root)

    # -- lifecycle ----------------------------------------------------------------------------

    def _dir(self, container_id: str) -> Path:
        return self.root / container_id

    async def _plan(
        self, config: ContainerConfig
    ) -> tuple[microvm_qemu.Plan, dict[str, Any], Path | None, list[tuple[str, str]]]:
        """What the VM is made of (plan), the guest's boot settings, the host layer to copy
        into its writable disk and its bind mounts; refuses what a VM cannot do."""
        python, args = self._agent_args(config)
        resources = config.resources
        if resources.memory_mb < MIN_MEMORY_MB:
            raise InvalidRequestError(
                f"microvm needs at least {MIN_MEMORY_MB} MiB of memory, not"
                f" {resources.memory_mb} (its kernel and init live in it)"
            )
        if resources.disk_mb < MIN_DISK_MB:
            raise InvalidRequestError(
                f"microvm needs a disk of at least {MIN_DISK_MB} MiB, not {resources.disk_mb}"
            )
        # the resolver's address reaches the guest with its NIC's (a bind is a disk, and a
        # disk of its own would give each sandbox a template of its own)
        kept = [b for b in config.binds if not (config.network and b.destination == RESOLV)]
        if any(not b.readonly for b in kept):
            raise CapabilityError(self.name, "writable bind mounts")
        lowers, upper = microvm_image.overlay_dirs(config.rootfs)
        if len(lowers) != 1:
            raise CapabilityError(self.name, "sandboxes started from a snapshot")
        cache = self.root / "cache"
        if time.monotonic() >= self._next_sweep:  # images removed since, superseded files
            self._next_sweep = time.monotonic() + CACHE_SWEEP_S
            microvm_image.sweep(cache)
        drives = [("base", await microvm_image.base_image(cache, lowers[0]))]
        binds: list[tuple[str, str]] = []
        for i, bind in enumerate(kept):
            drives.append((f"b{i}", await microvm_image.bind_image(cache, bind.source)))
            binds.append((f"b{i}", bind.destination))
        plan = microvm_qemu.Plan(
            self.accelerator(),
            resources.memory_mb,
            microvm_qemu.vcpus(resources),
            microvm_image.initramfs(cache),
            python,
            tuple(drives),
        )
        boot: dict[str, Any] = {
            "args": args,
            "env": config.env,
            "uid": config.uid,
            "gid": config.gid,
            "cwd": config.cwd,
            "hostname": config.hostname,
            "pids": resources.pids,
            "agent_socket": AGENT_SOCKET,
            # the guest's init installs it on the agent (runtimes/seccomp_bpf.py)
            "seccomp": seccomp_bpf.compile_profile(config.seccomp).hex() if config.seccomp else "",
        }
        return plan, boot, upper, binds

    async def start(self, config: ContainerConfig, bundle: Path, log: Path) -> int:
        # the agent's backstop deadline goes with the HELLO as seconds left: counted from now,
        # not from when the guest hears it, a template's or a cold boot would eat it (under
        # TCG a boot takes longer than a short timeout plus the grace)
        deadline = _deadline(config.args)
        settings = {"deadline_in": None if deadline is None else deadline - time.time()}
        plan, boot, upper, binds = await self._plan(config)
        directory = self._dir(config.id)
        directory.mkdir(parents=True)
        listener = socket.socket(fileno=os.dup(config.pass_fds[0]))
        try:
            if microvm_template.enabled():
                pid = await self._clone(config, plan, boot, upper, binds, directory, log, settings)
            else:
                pid = await self._boot(config, plan, boot, upper, binds, directory, log, settings)
            bundle.mkdir(parents=True, exist_ok=True)
            (bundle / "init.pid").write_text(str(pid))
            await self._channels[config.id].serve(listener)
        except BaseException:
            listener.close()
            await self.delete(config.id)
            raise
        return pid

    async def _boot(
        self,
        config: ContainerConfig,
        plan: microvm_qemu.Plan,
        boot: dict[str, Any],
        upper: Path | None,
        binds: list[tuple[str, str]],
        directory: Path,
        log: Path,
        settings: dict[str, Any],
    ) -> int:
        """A cold boot of the sandbox's own VM; its agent starts after the HELLO, with the
        `settings` (its deadline) once it listens."""
        rw = directory / "rw.ext4"
        await microvm_image.writable_layer(rw, upper, config.resources.disk_mb, boot, binds)
        pid = await microvm_qemu.launch(
            config.id, plan, directory, log, rw, config.resources, netns=config.netns
        )
        channel = self._channels[config.id] = Channel()
        await channel.connect(directory / "agent.sock", settings, network=config.network)
        await microvm_qemu.wait_ready(channel, pid, log, boot_timeout())
        await channel.send_time()  # the HELLO's time was read a boot ago
        return pid

    async def _clone(
        self,
        config: ContainerConfig,
        plan: microvm_qemu.Plan,
        boot: dict[str, Any],
        upper: Path | None,
        binds: list[tuple[str, str]],
        directory: Path,
        log: Path,
        settings: dict[str, Any],
    ) -> int:
        """A clone of the plan's template (booted first if there is none): the template's
        agent runs without a deadline, the clone's comes with its HELLO (`settings`)."""
        template = await self.templates.ensure(
            config.id, plan, boot, upper, binds, config.resources, boot_timeout()
        )
        settings = dict(settings)
        if config.env != template.env:
            settings["env"] = config.env
        pid, channel = await microvm_template.clone(
            config.id,
            plan,
            template,
            directory,
            log,
            config.resources,
            settings,
            config.netns,
            config.network,
        )
        self._channels[config.id] = channel
        return pid

    def _agent_args(self, config: ContainerConfig) -> tuple[str, list[str]]:
        """The guest agent's command line, listening inside the guest instead of on fd 3."""
        if len(config.pass_fds) != 1 or "--fd" not in config.args:
            raise CapabilityError(
                self.name, "images without python3", "the guest agent is its only exec channel"
            )
        python = config.args[0]
        if not PYTHON_PATH.match(python):
            raise CapabilityError(self.name, f"a python3 at {python!r}")
        args = list(config.args)
        i = args.index("--fd")
        args[i : i + 2] = ["--listen", AGENT_SOCKET]
        if "--deadline" in args:  # it comes with the HELLO (start)
            i = args.index("--deadline")
            del args[i : i + 2]
        return python, args

    async def status(self, container_id: str) -> ContainerStatus | None:
        directory = self._dir(container_id)
        if not directory.is_dir():
            return None
        pid = read_pid(directory)
        if not (pid and alive(pid)):
            return ContainerStatus.STOPPED
        return ContainerStatus.PAUSED if (directory / PAUSED).exists() else ContainerStatus.RUNNING

    async def pause(self, container_id: str) -> None:
        directory = self._dir(container_id)
        await microvm_sleep.pause(directory / "qmp.sock")
        (directory / PAUSED).touch()

    async def resume(self, container_id: str) -> None:
        directory = self._dir(container_id)
        await microvm_sleep.resume(directory / "qmp.sock")
        (directory / PAUSED).unlink(missing_ok=True)
        if (channel := self._channels.get(container_id)) is not None:
            await channel.send_time()  # the guest's clock stood still

    async def checkpoint(self, container_id: str, image_dir: Path) -> None:
        """Save the whole VM into `image_dir` (its state file and writable disk), then
        remove it. QEMU writes as its own uid, so into the VM's directory first."""
        directory = self._dir(container_id)
        pid = read_pid(directory)
        state = directory / "state"
        state.touch()
        os.chown(state, QEMU_UID, QEMU_UID)
        try:
            await microvm_sleep.save(directory / "qmp.sock", state)
        except BaseException:
            state.unlink(missing_ok=True)
            raise
        if pid:
            await reaper.reap(pid, timeout=10.0)
        image_dir.mkdir(parents=True, exist_ok=True)
        for name in SAVED:
            await _move(directory / name, image_dir / name)
        await self.delete(container_id)

    async def restore(
        self, config: ContainerConfig, bundle: Path, log: Path, image_dir: Path
    ) -> int:
        plan, _, _, _ = await self._plan(config)
        directory = self._dir(config.id)
        directory.mkdir(parents=True)
        # the disk is copied: the guest writes to it from `cont` on, and a wake that fails
        # after that must leave the image as it was saved, its disk matching its memory
        state, rw = directory / "state", directory / "rw.ext4"
        listener = socket.socket(fileno=os.dup(config.pass_fds[0]))
        try:
            await _move(image_dir / "state", state)
            await _copy(image_dir / "rw.ext4", rw)
            for path in (state, rw):
                os.chown(path, QEMU_UID, QEMU_UID)
            pid = await microvm_qemu.launch(
                config.id,
                plan,
                directory,
                log,
                rw,
                config.resources,
                incoming=True,
                netns=config.netns,
            )
            await microvm_sleep.load(directory / "qmp.sock", state)
            channel = self._channels[config.id] = Channel()
            await channel.connect(directory / "agent.sock", network=config.network)
            await microvm_qemu.wait_ready(channel, pid, log, microvm_sleep.LOAD_TIMEOUT_S)
            bundle.mkdir(parents=True, exist_ok=True)
            (bundle / "init.pid").write_text(str(pid))
            await channel.serve(listener)
            state.unlink()
            (image_dir / "rw.ext4").unlink()
        except BaseException:
            listener.close()
            if (opened := self._channels.pop(config.id, None)) is not None:
                await opened.close()
            await self._end(directory)
            if state.exists():  # the image stays whole for another try
                await _move(state, image_dir / "state")
            await self.delete(config.id)
            raise
        return pid

    async def kill(self, container_id: str, signal: int = 9) -> None:
        pid = read_pid(self._dir(container_id))
        if pid and alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal)

    async def _end(self, directory: Path) -> None:
        pid = read_pid(directory)
        if pid and alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if pid:
            await reaper.reap(pid, timeout=5.0)

    async def delete(self, container_id: str) -> None:
        channel = self._channels.pop(container_id, None)
        if channel is not None:
            await channel.close()
        await self._end(self._dir(container_id))
        directory = self._dir(container_id)
        await cgroups.drain(CGROUP_PARENT, container_id)
        cgroups.remove(CGROUP_PARENT, container_id)
        shutil.rmtree(directory, ignore_errors=True)

    async def list_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and p.name not in ("cache", "templates")
        )

    async def reattach(self, container_id: str, socket_path: Path) -> None:
        """Relay again to the guest of a VM an earlier engine started (re-adoption): a new
        HELLO drops the dead engine's connections inside."""
        directory = self._dir(container_id)
        if container_id in self._channels or not (directory / "agent.sock").exists():
            return
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()
            listener.bind(str(socket_path))
            listener.listen(64)
            channel = self._channels[container_id] = Channel()
            await channel.connect(directory / "agent.sock")
            if not (directory / PAUSED).exists():  # a stopped guest reads the HELLO at resume
                await asyncio.wait_for(channel.wait_ready(), timeout=10.0)
            await channel.serve(listener)
        except BaseException:
            listener.close()
            raise

    async def close(self) -> None:
        """The engine is closing: stop relaying (a VM left running is re-adopted later)."""
        for container_id in list(self._channels):
            await self._channels.pop(container_id).close()


def _deadline(args: list[str]) -> float | None:
    """The agent's backstop deadline on its command line (epoch seconds), if any."""
    if "--deadline" not in args:
        return None
    return float(args[args.index("--deadline") + 1])
