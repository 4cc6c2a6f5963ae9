"""The engine as child subreaper of its sandboxes' init processes (used by runtimes, whose
detached inits are re-parented, and by the engine).

`crun run --detach` forks the sandbox's init and exits, so the init is re-parented. Without
a subreaper it goes to the host's PID 1, which may reap late (here it left zombies behind);
with the engine as subreaper the init becomes our child and we reap it as soon as it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from pathlib import Path
from typing import Any

from tartarus.runtimes.bundle import HOST_UID_BASE, ID_RANGE, QEMU_UID

PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> None:
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


async def reap(pid: int, timeout: float = 2.0) -> bool:
    """Collect `pid`'s exit status if it is (or becomes) our child; True once it is gone.

    A dying pid-namespace init waits until every process of its namespace is reaped, and
    some of those (started by `runtime exec`) may have been re-parented to us: collect those
    too, or the init never finishes dying.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            # Not ours to reap (adopted after a restart, or started by another CLI process
            # whose init went to the host's PID 1): dead once gone or a zombie of someone else.
            done = not _exists(pid) or _is_zombie(pid)
        if done:
            return True
        if loop.time() > deadline:
            return False
        reap_sandbox_zombies()
        await asyncio.sleep(0.005)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


RUNTIME_NAMES = frozenset({"crun", "runc", "runsc", "runc:[1:CHILD]", "runc:[2:INIT]"})
_spawned: set[int] = set()  # runtime processes asyncio started and waits for: never ours to reap


def track(pid: int) -> None:
    """A child someone else waits for (runtimes/spawn.py): the sweep must leave it alone."""
    _spawned.add(pid)


def untrack(pid: int) -> None:
    _spawned.discard(pid)


async def spawn(*argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """asyncio.create_subprocess_exec, remembering the pid so the sweep leaves it alone."""
    proc = await asyncio.create_subprocess_exec(*argv, **kwargs)
    _spawned.add(proc.pid)
    return proc


def reap_sandbox_zombies() -> int:
    """waitpid() zombies re-parented to us (we are a subreaper); returns how many.

    Those are processes of a sandbox (inside its pid namespace, or with a sandbox uid) and
    runtime helpers whose runtime process exited before them. Processes we started
    ourselves (`spawn`) are left to asyncio, which waits for them.
    """
    me = str(os.getpid())
    reaped = 0
    for pid in _zombie_children(me):
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        uid = int(fields.get("Uid", "0").split()[0])
        in_sandbox = len(fields.get("NSpid", "").split()) > 1
        # a microVM's QEMU whose engine died is re-parented to us like a container's init
        sandbox_uid = HOST_UID_BASE <= uid < HOST_UID_BASE + ID_RANGE or uid == QEMU_UID
        orphaned_helper = fields.get("Name") in RUNTIME_NAMES and pid not in _spawned
        if in_sandbox or sandbox_uid or orphaned_helper:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
                reaped += 1
    _spawned.intersection_update(p for p in _spawned if Path(f"/proc/{p}").exists())
    return reaped


def _zombie_children(me: str) -> list[int]:
    """Our zombie children, from the one-line /proc/PID/stat (a full /proc/PID/status scan
    of every process costs ~10 ms, and this runs on every sandbox's end)."""
    found = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            state, ppid = stat[stat.rfind(b")") + 2 :].split(b" ", 2)[:2]
            if state == b"Z" and ppid.decode() == me:
                found.append(int(entry.name))
    return found
