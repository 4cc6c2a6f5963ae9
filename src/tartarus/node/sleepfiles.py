"""What a hibernated sandbox keeps on disk, and how its writable layer gets there and back.

The layer is a tmpfs (node/overlay.py), so hibernation copies its upper directory to
`<sandbox dir>/hibernated/upper` beside the checkpoint image and unmounts it; waking mounts a
fresh tmpfs of the same size, copies the upper back and mounts the overlay again at the same
path, which the restored processes expect. `cp -a` keeps what overlayfs stores in the upper
directory: owners, modes, xattrs (opaque directories) and whiteouts (0:0 device nodes).

The mounts exist only in the mount namespace of the engine that made them (runtimes/hostns.py),
so a later engine (the next CLI command, a restarted server) could not reach the layer of a
sandbox it re-adopted. An engine that leaves sandboxes running therefore starts a *keeper*: a
busybox shell that only sleeps in its namespace, keeping it alive, and names itself in each
sandbox's `layer.keeper`. A later engine copies and unmounts the layer through `nsenter`
into the keeper's namespace. The keeper exits once none of its sandboxes still names it
(hibernated, woken elsewhere, or removed: an rmdir of a mount point detaches the mounts in
every namespace).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from pathlib import Path

from tartarus.models import Resources
from tartarus.runtimes import hostns, reaper

DIRNAME = "hibernated"
KEEPER_FILE = "layer.keeper"
KEEPER_NAME = "tartarus-layer-keeper"
# $@: sandbox directories. Sleep while any of them still names us.
KEEPER_SCRIPT = """
while sleep 5; do
  mine=
  for d in "$@"; do read -r p < "$d/layer.keeper" 2>/dev/null && [ "$p" = "$$" ] && mine=1; done
  [ -n "$mine" ] || exit 0
done
"""


def hibernated_dir(directory: Path) -> Path:
    return directory / DIRNAME


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under `path` (what `du` counts)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def _mount_points() -> set[str]:
    # thread-self: the engine thread has its own mount namespace (runtimes/hostns.py)
    with open("/proc/thread-self/mountinfo") as f:
        return {line.split()[4] for line in f}


class Layer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.layer = directory / "layer"
        self.rootfs = directory / "rootfs"

    def mounted(self) -> bool:
        """Whether this engine thread sees the layer and the overlay mounted."""
        points = _mount_points()
        return str(self.layer) in points and str(self.rootfs) in points

    def keeper(self) -> int | None:
        """The pid of the keeper whose namespace holds this layer, if one does."""
        try:
            pid = int((self.directory / KEEPER_FILE).read_text())
            if KEEPER_NAME not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                return None
            with open(f"/proc/{pid}/mountinfo") as f:
                points = {line.split()[4] for line in f}
        except (OSError, ValueError):
            return None
        return pid if {str(self.layer), str(self.rootfs)} <= points else None

    def reachable(self) -> bool:
        return self.mounted() or self.keeper() is not None

    async def save(self, dest: Path) -> None:
        copy = ["cp", "-a", str(self.layer / "upper"), str(dest)]
        if self.mounted():
            await _run(*copy)
        elif (pid := self.keeper()) is not None:
            await _run("nsenter", f"--mount=/proc/{pid}/ns/mnt", "--", *copy)
        else:
            raise FileNotFoundError(f"the writable layer under {self.directory} is unreachable")

    def unmount(self) -> None:
        hostns.umount(str(self.rootfs))
        hostns.umount(str(self.layer))

    async def release(self) -> None:
        """Unmount it here and in a keeper's namespace, which then lets go of it."""
        self.unmount()
        if (pid := self.keeper()) is not None:
            ns = f"--mount=/proc/{pid}/ns/mnt"
            await _run("nsenter", ns, "--", "umount", "-l", str(self.rootfs), str(self.layer))
        (self.directory / KEEPER_FILE).unlink(missing_ok=True)

    async def load(self, saved_upper: Path, lowerdir: str, resources: Resources) -> None:
        """Mount a fresh layer holding `saved_upper`, and the overlay on it over `lowerdir`
        (the image, below a snapshot's layers if it started from one: `Overlay.lowerdir`)."""
        if not saved_upper.is_dir():
            raise FileNotFoundError(f"the saved writable layer {saved_upper} is missing")
        self.layer.mkdir(exist_ok=True)
        self.rootfs.mkdir(exist_ok=True)
        size = f"size={resources.disk_mb}m,mode=0755"  # as node/overlay.py mounts it
        hostns.mount("tartarus-lethe", str(self.layer), "tmpfs", size)
        try:
            upper, work = self.layer / "upper", self.layer / "work"
            await _run("cp", "-a", str(saved_upper), str(upper))
            work.mkdir()
            options = f"lowerdir={lowerdir},upperdir={upper},workdir={work}"
            hostns.mount("tartarus-overlay", str(self.rootfs), "overlay", options)
        except BaseException:
            hostns.umount(str(self.layer))
            raise


async def _run(*argv: str) -> None:
    proc = await reaper.spawn(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        raise OSError(f"{argv[0]} failed: {message[-1] if message else proc.returncode}")


def keep(directories: list[Path]) -> int | None:
    """Start a keeper for these sandboxes' layers (mounted in this thread's namespace, which
    the keeper inherits); returns its pid. Called by an engine leaving them running."""
    busybox = shutil.which("busybox")
    if not directories or busybox is None:
        return None
    proc = subprocess.Popen(
        [busybox, "sh", "-c", KEEPER_SCRIPT, KEEPER_NAME, *map(str, directories)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C of the CLI that started it must not end it
    )
    for directory in directories:
        (directory / KEEPER_FILE).write_text(str(proc.pid))
    threading.Thread(target=proc.wait, daemon=True).start()  # reaped if we outlive it
    return proc.pid
