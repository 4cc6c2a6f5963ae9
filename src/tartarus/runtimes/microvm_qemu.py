"""Starting one QEMU `microvm` process: its command line, its cgroups, and waiting for it.

Shared by a cold boot, a template boot (RAM in a file, to be snapshotted) and a clone (that
RAM file mapped copy-on-write, `-incoming defer`): the three differ only in those flags, and a
clone's devices must be exactly its template's, so one function writes them all. QEMU
daemonizes once its devices are up (errors before that reach us on stderr), drops to an
unprivileged uid outside the containers' range, and is re-parented to the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tartarus.errors import RuntimeUnavailableError
from tartarus.models import Resources
from tartarus.runtimes import cgroups, microvm_image, microvm_net, spawn
from tartarus.runtimes.bundle import CGROUP_PARENT, CPU_PERIOD_US, QEMU_UID
from tartarus.runtimes.microvm_channel import Channel

QEMU = "qemu-system-x86_64"
QEMU_OVERHEAD_MB = 256  # QEMU's own memory beside the guest's (TCG code cache, devices)
PORT = "tartarus.agent"  # the virtio-serial port's name (guest/serial.py looks it up)


@dataclass(frozen=True)
class Plan:
    """What a VM is made of, apart from its own writable disk and state files."""

    accel: str  # kvm | tcg
    memory_mb: int
    vcpus: int
    initrd: Path
    python: str
    drives: tuple[tuple[str, Path], ...]  # (virtio serial, image) of the read-only disks

    def key(self) -> str:
        """Names the plan for template snapshots: a clone must match its template."""
        kernel = microvm_image.kernel()
        stamps = [microvm_image.key(kernel, *(p for _, p in self.drives), self.initrd)]
        if (qemu := shutil.which(QEMU)) is not None:  # the migration format is QEMU's
            st = os.stat(qemu)
            stamps.append(f"{st.st_size}:{st.st_mtime_ns}")
        fields = [self.accel, self.memory_mb, self.vcpus, str(self.initrd), self.python]
        fields += [f"{s}={p}" for s, p in self.drives]
        return hashlib.sha256(json.dumps([fields, stamps]).encode()).hexdigest()[:24]


def machine(accel: str, memory_mb: int, vcpus: int) -> list[str]:
    argv = [QEMU, "-M", "microvm", "-m", f"{memory_mb}M", "-smp", str(vcpus)]
    if accel == "kvm":  # without -arch-capabilities QEMU 7.2 aborts on MSR 0x10a
        argv += ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
    else:
        argv += ["-accel", "tcg,tb-size=64", "-cpu", "max"]
    argv += ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
    # QEMU's own seccomp filter: no obsolete or resource-control syscalls. `spawn` stays
    # allowed (saving a VM is `exec:cat`) and `elevateprivileges` too (-runas drops to
    # QEMU_UID after the filter is in place)
    return [*argv, "-sandbox", "on,obsolete=deny,resourcecontrol=deny"]


def memory(memory_mb: int, ram: Path | None = None, share: bool = True) -> list[str]:
    """Guest RAM as a named backend (`mem0`) whatever it is, so that a hibernated VM's state,
    whose RAM block is named after it, loads into a VM with plain anonymous memory."""
    if ram is None:
        backend = f"memory-backend-ram,id=mem0,size={memory_mb}M"
    else:
        backend = f"memory-backend-file,id=mem0,size={memory_mb}M,mem-path={ram}"
        backend += f",share={'on' if share else 'off'}"
    return ["-object", backend, "-machine", "memory-backend=mem0"]


def boot_args(initrd: Path, mode: str, python: str) -> list[str]:
    cmdline = f"console=ttyS0 quiet panic=-1 tsc_early_khz={tsc_khz()}"
    cmdline += f" random.trust_cpu=on tartarus.mode={mode}"
    if python:
        cmdline += f" tartarus.python={python}"
    return ["-kernel", str(microvm_image.kernel()), "-initrd", str(initrd), "-append", cmdline]


def tsc_khz() -> int:
    """The host's TSC rate: microvm has no HPET or PM timer to calibrate it against, and a
    TCG guest without `tsc_early_khz` hangs at boot (TCG's TSC is the host's)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return 2_000_000


def vcpus(resources: Resources) -> int:
    return max(1, min(os.cpu_count() or 1, math.ceil(resources.cpu)))


async def launch(
    container_id: str,
    plan: Plan,
    directory: Path,
    log: Path,
    rw: Path,
    resources: Resources,
    *,
    ram: Path | None = None,
    share: bool = True,
    incoming: bool = False,
    netns: Path | None = None,
) -> int:
    """Start QEMU daemonized in the sandbox's cgroups; returns its pid. Its sockets
    (agent.sock, qmp.sock) and pid file live in `directory`; with `ram`, guest memory is
    that file (`share`: written through, for a template; else mapped copy-on-write); with
    `netns`, QEMU runs in that network namespace, its NIC on a tap there (microvm_net)."""
    argv = machine(plan.accel, plan.memory_mb, plan.vcpus)
    argv += boot_args(plan.initrd, "sandbox", plan.python)
    argv += memory(plan.memory_mb, ram, share)
    drives = [plan.drives[0], ("rw", rw), *plan.drives[1:]]
    for serial, path in drives:
        options = f"id={serial},file={path},format=raw,if=none"
        options += ",cache=unsafe" if serial == "rw" else ",readonly=on"  # rw: ephemeral
        argv += ["-drive", options, "-device", f"virtio-blk-device,drive={serial},serial={serial}"]
    argv += ["-chardev", f"file,id=console,path={log},append=on", "-serial", "chardev:console"]
    argv += ["-device", "virtio-serial-device,max_ports=2"]
    agent = directory / "agent.sock"
    argv += ["-chardev", f"socket,id=agent,path={agent},server=on,wait=off"]
    argv += ["-device", f"virtserialport,chardev=agent,name={PORT}"]
    argv += ["-qmp", f"unix:{directory / 'qmp.sock'},server=on,wait=off"]
    argv += microvm_net.qemu_args(netns)
    if incoming:
        argv += ["-incoming", "defer"]
    pid_file = directory / "qemu.pid"
    argv += ["-runas", f"{QEMU_UID}:{QEMU_UID}", "-daemonize", "-pidfile", str(pid_file)]
    join = "".join(f'echo $$ > "{p}" && ' for p in make_cgroups(container_id, resources))
    if netns is not None:
        await microvm_net.wire(netns, directory)
    wrapper = ["sh", "-c", f'{join}exec "$@"', "sh"]
    rc, _, err = await spawn.run([*microvm_net.enter(netns), *wrapper, *argv])
    if rc != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {rc}"]
        raise RuntimeUnavailableError(f"microvm: QEMU did not start: {last[0]}")
    pid = read_pid(directory)
    if pid is None:
        raise RuntimeUnavailableError("microvm: QEMU started but wrote no pid file")
    return pid


async def wait_ready(channel: Channel, pid: int, log: Path, timeout: float) -> None:
    """Until the guest's agent is ready; RuntimeUnavailableError with the console's last
    lines if QEMU ends first (a panic, a failed init) or the deadline passes."""

    async def until_ready() -> None:
        waiting = asyncio.ensure_future(channel.wait_ready())
        try:
            while not waiting.done():
                await asyncio.wait({waiting}, timeout=0.2)
                if not waiting.done() and not alive(pid):
                    raise ConnectionError("QEMU exited")
            await waiting
        finally:
            waiting.cancel()

    try:
        await asyncio.wait_for(until_ready(), timeout)
    except TimeoutError:
        raise RuntimeUnavailableError(
            f"microvm: the guest did not boot in {timeout:g} s: {console_tail(log)}"
        ) from None
    except ConnectionError:
        raise RuntimeUnavailableError(
            f"microvm: the guest ended while booting: {console_tail(log)}"
        ) from None


def make_cgroups(container_id: str, resources: Resources) -> list[Path]:
    """The sandbox's memory and cpu cgroups (v1 or v2) with QEMU's limits; their
    cgroup.procs files, which QEMU's wrapper joins before it execs."""
    limit = (resources.memory_mb + QEMU_OVERHEAD_MB) << 20
    quota = int(resources.cpu * CPU_PERIOD_US)
    root = cgroups.CGROUP_ROOT
    if (root / "memory").is_dir():
        memory = root / "memory" / CGROUP_PARENT / container_id
        cpu = root / "cpu" / CGROUP_PARENT / container_id
        settings = [
            (memory, {"memory.limit_in_bytes": str(limit)}),
            (cpu, {"cpu.cfs_period_us": str(CPU_PERIOD_US), "cpu.cfs_quota_us": str(quota)}),
        ]
    else:
        unified = root / CGROUP_PARENT / container_id
        cpu_max = f"{quota} {CPU_PERIOD_US}"
        settings = [(unified, {"memory.max": str(limit), "cpu.max": cpu_max})]
    procs = []
    for path, values in settings:
        path.mkdir(parents=True, exist_ok=True)
        for name, value in values.items():
            (path / name).write_text(value)
        procs.append(path / "cgroup.procs")
    return procs


def read_pid(directory: Path) -> int | None:
    try:
        return int((directory / "qemu.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Running and not a zombie (a dead QEMU waits to be reaped by the engine)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def console_tail(log: Path, lines: int = 4) -> str:
    """The guest console's last lines (a panic, our init's or the agent's failure)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "no console output"
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(kept) or "no console output"
