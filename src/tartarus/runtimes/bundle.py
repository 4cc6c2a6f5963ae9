"""OCI bundle generation: the one place that decides how a sandbox is isolated.

Every sandbox gets new pid, mount, ipc, uts, network (loopback only: no route out) and user
namespaces; container uid 0..65535 maps to host 100000..165535, so even a process that
becomes root inside is an unprivileged uid on the host. The init process runs as uid 1000
with no capabilities, no-new-privileges and the default seccomp profile; memory (with
swap at the same limit, so no swap escape), CPU and pids limits go into the cgroup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tartarus.models import Resources
from tartarus.runtimes.base import ContainerConfig
from tartarus.runtimes.seccomp import default_profile

HOST_UID_BASE = 100000
ID_RANGE = 65536
QEMU_UID = HOST_UID_BASE + ID_RANGE + 1000  # microVMs' QEMU: no container's uid can signal it
CPU_PERIOD_US = 100_000
CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")
CGROUP_PARENT = "tartarus"  # every sandbox cgroup lives under this one

MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]


def host_uid(container_uid: int) -> int:
    return HOST_UID_BASE + container_uid


def cgroup_limits(res: Resources) -> dict[str, Any]:
    """The OCI `linux.resources` limits for `res` (also what `runtime update` takes)."""
    memory = res.memory_mb * 1024 * 1024
    return {
        "memory": {"limit": memory, "swap": memory},
        "cpu": {"quota": int(res.cpu * CPU_PERIOD_US), "period": CPU_PERIOD_US},
        "pids": {"limit": res.pids},
    }


def build_spec(config: ContainerConfig) -> dict[str, Any]:
    res = config.resources
    mounts: list[dict[str, Any]] = [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        # sysfs needs the netns's owner: a joined netns (Styx) is the host's, so it gets an
        # empty read-only /sys (never the host's, which a bind fallback would show)
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        }
        if config.netns is None
        else {
            "destination": "/sys",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "noexec", "nodev", "ro", "size=4k"],
        },
    ]
    for bind in config.binds:
        options = ["rbind", "nosuid", "nodev"] + (["ro"] if bind.readonly else ["rw"])
        mounts.append(
            {
                "destination": bind.destination,
                "type": "bind",
                "source": str(bind.source),
                "options": options,
            }
        )
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": config.uid, "gid": config.gid},
            "args": config.args,
            "env": [f"{k}={v}" for k, v in config.env.items()],
            "cwd": config.cwd,
            "capabilities": {k: [] for k in CAPABILITY_SETS},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(config.rootfs), "readonly": False},
        "hostname": config.hostname,
        "mounts": mounts,
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": HOST_UID_BASE, "size": ID_RANGE}],
            "gidMappings": [{"containerID": 0, "hostID": HOST_UID_BASE, "size": ID_RANGE}],
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "user", "cgroup")]
            + [{"type": "network", **({"path": str(config.netns)} if config.netns else {})}],
            "resources": {
                **cgroup_limits(res),
                "devices": [{"allow": False, "access": "rwm"}],
            },
            "cgroupsPath": f"/{CGROUP_PARENT}/{config.id}",
            "seccomp": config.seccomp or default_profile(),
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }


def write_bundle(config: ContainerConfig, bundle: Path) -> Path:
    bundle.mkdir(parents=True, exist_ok=True)
    path = bundle / "config.json"
    path.write_text(json.dumps(build_spec(config)))
    return path
