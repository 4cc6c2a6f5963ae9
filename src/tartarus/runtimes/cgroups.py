"""Reading what the runtime's cgroups recorded, and removing what a runtime left behind.

The runtimes create and delete the cgroups; we only read the OOM-kill counter before the
delete (it is the only reliable way to tell an OOM kill from any other SIGKILL), and sweep
directories a runtime is known to leave (runc leaves its cgroup2 twin on hybrid hosts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _hierarchies() -> list[Path]:
    try:
        return [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def _memory_dir(parent: str, sandbox_id: str) -> Path:
    v1 = CGROUP_ROOT / "memory" / parent / sandbox_id
    return v1 if v1.exists() else CGROUP_ROOT / parent / sandbox_id


def oom_kills(parent: str, sandbox_id: str) -> int:
    """How many processes the kernel OOM-killed in this sandbox's memory cgroup."""
    base = _memory_dir(parent, sandbox_id)
    for name, key in (("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill")):
        try:
            for line in (base / name).read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == key:
                    return int(parts[1])
        except OSError:
            continue
    return 0


def memory_peak_bytes(parent: str, sandbox_id: str) -> int | None:
    base = _memory_dir(parent, sandbox_id)
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        try:
            return int((base / name).read_text())
        except (OSError, ValueError):
            continue
    return None


def leftovers(parent: str, sandbox_id: str | None = None) -> list[Path]:
    """Cgroup directories of ours that still exist (all sandboxes when no id is given)."""
    found: list[Path] = []
    for hierarchy in _hierarchies():
        base = hierarchy / parent
        if not base.is_dir():
            continue
        if sandbox_id is None:
            found.extend(p for p in base.iterdir() if p.is_dir())
        elif (base / sandbox_id).is_dir():
            found.append(base / sandbox_id)
    v2 = CGROUP_ROOT / parent
    if (v2 / "cgroup.procs").exists():
        found.extend(p for p in v2.iterdir() if p.is_dir() and (sandbox_id in (None, p.name)))
    return found


def _mounted(path: Path) -> bool:
    """Whether `path` lies in a mounted hierarchy. In our private mount namespace the
    unmounted `unified` is a plain directory where runtimes leave `cgroup.procs` files with
    the pids of processes long gone (hostns.remove_shadow_cgroup): never members to kill."""
    top = CGROUP_ROOT / path.relative_to(CGROUP_ROOT).parts[0]
    return (top / "cgroup.procs").exists()


def pids(parent: str, sandbox_id: str) -> set[int]:
    found: set[int] = set()
    for path in filter(_mounted, leftovers(parent, sandbox_id)):
        for procs in path.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in procs.read_text().split())
    return found


async def drain(parent: str, sandbox_id: str, timeout: float = 5.0) -> set[int]:
    """Wait until no process is left in the sandbox's cgroups, SIGKILLing stragglers.

    A runtime's kill returns once the init is signalled; the rest of the pid namespace dies
    asynchronously, and a cgroup with members cannot be removed. Returns what survived.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while left := pids(parent, sandbox_id):
        if loop.time() > deadline:
            return left
        if loop.time() > deadline - timeout / 2:
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.02)
    return set()


def remove(parent: str, sandbox_id: str) -> None:
    """rmdir leftover (empty) cgroups of one sandbox, children first."""
    for path in leftovers(parent, sandbox_id):
        for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()
        with contextlib.suppress(OSError):
            path.rmdir()
