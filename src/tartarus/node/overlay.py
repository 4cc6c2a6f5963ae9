"""Lethe: the private, size-capped writable layer of one sandbox.

A tmpfs of `disk_mb` holds the overlay's upper and work dirs, so writing past the disk limit
fails with ENOSPC inside the sandbox and can never fill the host's disk; the template
rootfs is the read-only lower layer and is never modified. Teardown unmounts both and
removes the directory. The tmpfs pages are charged to the sandbox's memory cgroup, so a
full disk also counts against its memory limit (documented trade-off: setup costs about
1 ms, where a loop-mounted filesystem costs a mkfs per sandbox).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from tartarus.runtimes import hostns

LOWERS_FILE = "lowers"  # the stacked lowerdir of a sandbox started from a snapshot


# Inodes per MiB of layer: a tmpfs otherwise allows half the host's RAM pages in inodes, and
# each costs kernel memory whatever the files hold (1 GiB of layer: 65536 files).
INODES_PER_MB = 64
MIN_INODES = 4096


def _options(disk_mb: int) -> str:
    return f"size={disk_mb}m,nr_inodes={max(MIN_INODES, disk_mb * INODES_PER_MB)},mode=0755"


class Overlay:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.layer = directory / "layer"
        self.rootfs = directory / "rootfs"

    def mount(
        self,
        lower: Path,
        disk_mb: int,
        owned_dirs: dict[str, tuple[int, int, int]],
        *,
        extra_lowers: Sequence[Path] = (),
    ) -> None:
        """Mount the layer; `owned_dirs` maps paths to (uid, gid, mode) pre-created in upper.
        `extra_lowers` (a snapshot's layers, topmost first) lie between it and `lower`."""
        self.layer.mkdir(parents=True, exist_ok=True)
        self.rootfs.mkdir(exist_ok=True)
        hostns.mount("tartarus-lethe", str(self.layer), "tmpfs", _options(disk_mb))
        upper, work = self.layer / "upper", self.layer / "work"
        upper.mkdir()
        work.mkdir()
        for path, (uid, gid, mode) in owned_dirs.items():
            target = upper / path.lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            os.chown(target, uid, gid)
            target.chmod(mode)
        lowers = ":".join(map(str, [*extra_lowers, lower]))
        if extra_lowers:  # a remount (a wake) must stack the same layers
            (self.directory / LOWERS_FILE).write_text(lowers)
        options = f"lowerdir={lowers},upperdir={upper},workdir={work}"
        hostns.mount("tartarus-overlay", str(self.rootfs), "overlay", options)

    def lowerdir(self, image: Path) -> str:
        """The overlay's `lowerdir` as mounted: `image` alone unless a snapshot lies above."""
        try:
            return (self.directory / LOWERS_FILE).read_text()
        except FileNotFoundError:
            return str(image)

    def resize(self, disk_mb: int) -> None:
        """A new size for the writable layer (its tmpfs); less than what it holds fails."""
        hostns.mount(
            "tartarus-lethe", str(self.layer), "tmpfs", _options(disk_mb), hostns.MS_REMOUNT
        )

    def unmount(self) -> None:
        hostns.umount(str(self.rootfs))
        hostns.umount(str(self.layer))

    def remove(self) -> None:
        self.unmount()
        shutil.rmtree(self.directory, ignore_errors=True)
