"""A private mount namespace for the engine process (the cgroup-v1-hybrid workaround).

crun refuses to create containers on hosts where cgroup2 is mounted beside v1 controllers
("hybrid" mode). Unmounting /sys/fs/cgroup/unified in a private mount namespace makes it
see plain v1. Doing that once for our own thread saves spawning `unshare` (about 20 ms) on
every create, and has a second benefit: every overlay and tmpfs the engine mounts lives in
that namespace, so if the engine dies, the kernel drops them; nothing can leak into the
host's mount table.

unshare(CLONE_NEWNS) affects only the calling thread, so the engine must do its mounts and
spawn runtimes from the thread that called `enter()` (the event loop thread).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_REMOUNT = 32
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_entered_thread: int | None = None
_lock = threading.Lock()

UNIFIED = "/sys/fs/cgroup/unified"


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def is_hybrid_cgroup_host() -> bool:
    return _mounted(UNIFIED) and Path("/sys/fs/cgroup/memory").is_dir()


def _mounted(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path for line in f)
    except OSError:
        return False


def enter() -> None:
    """Move the calling thread into a private mount namespace with a v1-only cgroup view."""
    global _entered_thread
    with _lock:
        if _entered_thread == threading.get_ident():
            return
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / rprivate")
        if _mounted(UNIFIED):
            _check(_libc.umount2(UNIFIED.encode(), MNT_DETACH), f"umount {UNIFIED}")
        _entered_thread = threading.get_ident()


def entered() -> bool:
    return _entered_thread == threading.get_ident()


def remove_shadow_cgroup(relative: str) -> None:
    """Remove what a runtime wrote under the hidden cgroup2 mount point.

    With /sys/fs/cgroup/unified unmounted in our namespace, crun and runc still create
    `unified/<cgroupsPath>/cgroup.procs` there, as plain files on the /sys/fs/cgroup tmpfs
    (shared with the host, where the real cgroup2 mount hides them). Nobody else would
    ever remove them.
    """
    shadow = Path(UNIFIED) / relative.strip("/")
    if ".." in shadow.parts:
        raise ValueError(f"bad cgroup path {relative!r}")
    if not _mounted(UNIFIED):
        shutil.rmtree(shadow, ignore_errors=True)
    elif is_hybrid_cgroup_host():
        # the real cgroup2 hides the shadow from this thread: look from a private namespace
        subprocess.run(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                f'umount {UNIFIED} && rm -rf "$0"',
                str(shadow),
            ],
            capture_output=True,
            check=False,
        )


def sweep_shadow_cgroups(parent: str, older_than_s: float = 60.0) -> list[str]:
    """Remove the shadows (see `remove_shadow_cgroup`) none of whose processes lives: what
    a runtime left when its container went some way we did not see. Only where they are
    visible (our private namespace); a young one may be a container still starting."""
    base = Path(UNIFIED) / parent.strip("/")
    if _mounted(UNIFIED) or not base.is_dir():
        return []
    removed = []
    for path in base.iterdir():
        try:
            if not path.is_dir() or time.time() - path.stat().st_mtime < older_than_s:
                continue
            procs = path / "cgroup.procs"
            pids = [int(p) for p in procs.read_text().split()] if procs.exists() else []
        except (OSError, ValueError):
            continue
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def mount(source: str, target: str, fstype: str, options: str = "", flags: int = 0) -> None:
    _check(
        _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, options.encode()),
        f"mount {fstype} on {target}",
    )


def umount(target: str) -> None:
    ret = _libc.umount2(target.encode(), MNT_DETACH)
    if ret != 0 and ctypes.get_errno() not in (22, 2):  # EINVAL: not mounted; ENOENT: gone
        _check(ret, f"umount {target}")
