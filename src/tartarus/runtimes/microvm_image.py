"""The microVM's disks and boot files, made from what the engine already has.

A VM cannot bind-mount host directories (virtiofs and 9p would block snapshots, and the
Debian cloud kernel has no 9p), so everything the guest sees is a virtio block device:

* the template's rootfs as a read-only ext4 image, built once per image (images are
  content-addressed, so the image directory names it) and shared by every VM;
* each read-only bind (the guest agent's files) as a small ext4 image, cached by content;
* a per-VM writable ext4 of `disk_mb` (the disk limit is its size): the initramfs stacks an
  overlayfs of it over the base, as Lethe does on the host for containers. A qcow2 overlay
  was the alternative, but it caps nothing (the guest could fill the base image's free
  space) and would need a resize per VM. It is seeded with what the engine pre-created in
  its host layer (home, workdir, /tmp: ids shifted back from the user namespace's) and the
  boot configuration PID 1 reads (guest/serial.py).

The kernel is Debian's cloud kernel (scripts/setup.sh extracts it to /opt/tartarus/microvm)
or one the user points to (`kernel`); Debian's virtio drivers are modules, so a tiny busybox
initramfs loads those there are, mounts the disks and switches to the image's python3
running guest/serial.py. mkfs runs from the engine's thread: the host layer is mounted in
its private mount namespace only. The cache of these files is swept (`sweep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

from tartarus.errors import RuntimeUnavailableError
from tartarus.runtimes import spawn
from tartarus.runtimes.bundle import HOST_UID_BASE, ID_RANGE

KERNEL_DIR = "/opt/tartarus/microvm/kernel"  # vmlinuz + modules/*.ko (scripts/setup.sh)
BUSYBOX = Path("/bin/busybox")
# load order; each needs only those before it (their `depends=`)
MODULES = (
    *("virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console", "overlay"),
    *("failover", "net_failover", "virtio_net"),
)
DRIVERS = ("virtio_blk", "virtio_console", "virtio_net")  # a sandbox's guest needs them
PROBE_MARK = "TARTARUS-USERSPACE-UP"
FAIL_MARK = "TARTARUS-BOOT-FAILED"
BOOT_FILE = "boot.json"
BINDS_FILE = "binds"
SOURCE = ".source"  # beside a base image: the template rootfs it was made from
LOCK_POLL_S = 0.05  # how often a wait for a cache file being built looks again

# The initramfs's /init. Disks are found by their virtio serial (base, rw, b0, b1 ...).
INIT = f"""#!/bin/busybox sh
B=/bin/busybox
fail() {{ echo "{FAIL_MARK}: $*"; $B poweroff -f; }}
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
for m in {" ".join(MODULES)}; do  # those not here are built into the kernel (or missing)
  [ -e /lib/modules/$m.ko ] && {{ $B insmod /lib/modules/$m.ko || fail "insmod $m"; }}
done
mode=probe
python=
for arg in $($B cat /proc/cmdline); do
  case "$arg" in
    tartarus.mode=*) mode="${{arg#tartarus.mode=}}" ;;
    tartarus.python=*) python="${{arg#tartarus.python=}}" ;;
  esac
done
if [ "$mode" = probe ]; then  # whatever kernel it is, it can run a sandbox
  [ -d /sys/bus/platform/drivers/virtio-mmio ] || fail "the guest kernel has no virtio-mmio"
  for d in {" ".join(DRIVERS)}; do
    [ -d /sys/bus/virtio/drivers/$d ] || fail "the guest kernel has no $d driver"
  done
  $B grep -qw overlay /proc/filesystems || fail "the guest kernel has no overlayfs"
  echo {PROBE_MARK}; $B poweroff -f
fi
if [ "$mode" = hold ]; then while :; do echo {PROBE_MARK}; $B sleep 1; done; fi
for i in $($B seq 200); do [ -e /sys/block/vdb ] && break; $B usleep 10000; done
for d in /sys/block/vd*; do
  s=$($B cat $d/serial 2>/dev/null)
  [ -n "$s" ] && eval "dev_$s=/dev/${{d##*/}}"
done
[ -n "$dev_base" ] && [ -n "$dev_rw" ] || fail "disks missing: $($B ls /sys/block)"
$B mkdir -p /lower /rw /newroot
$B mount -t ext4 -o ro "$dev_base" /lower || fail "mount base"
$B mount -t ext4 "$dev_rw" /rw || fail "mount rw"
$B mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \\
  || fail "mount overlay"
while read -r name dest; do
  eval "dev=\\$dev_$name"
  $B mkdir -p "/newroot$dest" && $B mount -t ext4 -o ro "$dev" "/newroot$dest" || fail "bind $dest"
done < /rw/{BINDS_FILE}
$B mkdir -p /newroot/run /newroot/dev /newroot/proc /newroot/sys
$B mount -t tmpfs -o mode=755,size=16m,nosuid,nodev tmpfs /newroot/run
$B mkdir -p /newroot/run/tartarus
$B cp /rw/{BOOT_FILE} /newroot/run/tartarus/{BOOT_FILE}
$B mount --move /dev /newroot/dev
$B mkdir -p /newroot/dev/pts /newroot/dev/shm
$B mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
$B mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/dev/shm
# no user namespaces for the sandbox user (Debian's switch; any kernel: none at all)
echo 0 > /proc/sys/kernel/unprivileged_userns_clone 2>/dev/null \
  || echo 0 > /proc/sys/user/max_user_namespaces
$B mount --move /proc /newroot/proc
$B mount --move /sys /newroot/sys
$B ip link set lo up
exec $B switch_root /newroot "$python" -I -S /.tartarus/serial.py /run/tartarus/{BOOT_FILE}
"""


def kernel_dir() -> Path:
    return Path(os.environ.get("TARTARUS_MICROVM_KERNEL") or KERNEL_DIR)


def kernel() -> Path:
    """The guest kernel, or RuntimeUnavailableError saying how to get it. Debian's is a
    `vmlinuz` with its drivers as modules beside it (modules/*.ko); a kernel of the user's
    (`TARTARUS_MICROVM_KERNEL`) may be an uncompressed `vmlinux` with a PVH entry, as
    Firecracker's are, with the virtio drivers built in: a module not there is not loaded."""
    for name in ("vmlinuz", "vmlinux"):
        if (kernel_dir() / name).is_file():
            return kernel_dir() / name
    raise RuntimeUnavailableError(
        f"no guest kernel (vmlinuz or vmlinux) in {kernel_dir()}"
        " (scripts/setup.sh extracts Debian's cloud kernel to /opt/tartarus/microvm/kernel)"
    )


def _modules() -> list[Path]:
    """The guest kernel's modules that are there, in load order."""
    paths = [kernel_dir() / "modules" / f"{m}.ko" for m in MODULES]
    return [p for p in paths if p.is_file()]


def _stamp(*paths: Path) -> str:
    digest = hashlib.sha256()
    for p in paths:
        st = p.stat()
        digest.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]


def key(*paths: Path) -> str:
    """What the probe's cache depends on besides the QEMU binary: kernel, modules, busybox."""
    found = [kernel_dir() / k for k in ("vmlinuz", "vmlinux")]
    existing = [p for p in (*found, *_modules(), BUSYBOX, *paths) if p.exists()]
    return _stamp(*existing) + hashlib.sha256(INIT.encode()).hexdigest()[:8]


def initramfs(cache: Path) -> Path:
    """busybox, the modules and /init as an uncompressed newc cpio (TCG would spend longer
    decompressing it than loading it), built once per kernel and init script."""
    kernel()
    if not BUSYBOX.is_file():
        raise RuntimeUnavailableError("no /bin/busybox (apt-get install busybox-static)")
    target = cache / f"initramfs-{key()}.cpio"
    if target.is_file():
        _used(target)
        return target
    out = io.BytesIO()
    writer = _Cpio(out)
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "mnt"):
        writer.add(d, 0o040755)
    writer.add("bin/busybox", 0o100755, BUSYBOX.read_bytes())
    writer.add("init", 0o100755, INIT.encode())
    for module in _modules():
        writer.add(f"lib/modules/{module.name}", 0o100644, module.read_bytes())
    writer.add("TRAILER!!!", 0)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(out.getvalue())
    tmp.replace(target)
    return target


class _Cpio:
    """The newc format the kernel unpacks: a header of hex fields, name and data 4-aligned."""

    def __init__(self, out: io.BytesIO) -> None:
        self.out = out
        self.ino = 1

    def add(self, name: str, mode: int, data: bytes = b"") -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.out.write(header + name.encode() + b"\0")
        self.out.write(b"\0" * (-self.out.tell() % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-self.out.tell() % 4))


@contextlib.contextmanager
def _unless_locked(path: Path) -> Iterator[None]:
    """Hold `path`'s lock at once, or raise BlockingIOError: someone is building it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


@contextlib.asynccontextmanager
async def building(path: Path) -> AsyncIterator[None]:
    """Hold `path`'s lock while building what it guards, waiting without blocking the event
    loop: the holder may be another engine or a coroutine of this one (a pool's first fill
    creates sandboxes of one template at once; a blocking flock there deadlocked the loop)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(LOCK_POLL_S)
        yield


def _tree_size(root: Path) -> tuple[int, int]:
    """(bytes in 4 KiB blocks, entries) under `root`, for sizing its image."""
    total, count = 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            count += 1
            with contextlib.suppress(OSError):
                total += (os.lstat(os.path.join(dirpath, name)).st_size + 4095) // 4096 * 4096
    return total, count


async def _mkfs(target: Path, source: Path, size_mb: int, inodes: int, label: str) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    argv = ["mkfs.ext4", "-q", "-F", "-L", label, "-O", "^has_journal", "-m", "0"]
    argv += ["-N", str(inodes), "-d", str(source), str(tmp), f"{size_mb}M"]
    try:
        rc, _, err = await spawn.run(argv)
    except FileNotFoundError:
        raise RuntimeUnavailableError("no mkfs.ext4 (apt-get install e2fsprogs)") from None
    if rc != 0:
        tmp.unlink(missing_ok=True)
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise RuntimeUnavailableError(f"microvm: mkfs.ext4 of {source} failed: {last[0]}")
    tmp.replace(target)


def _sized(root: Path, slack_mb: int) -> tuple[int, int]:
    total, count = _tree_size(root)
    return total * 5 // 4 // (1 << 20) + slack_mb, count + count // 4 + 1024


async def base_image(cache: Path, lower: Path) -> Path:
    """The read-only ext4 of a template rootfs (content-addressed: its path names it)."""
    name = hashlib.sha256(str(lower.resolve()).encode()).hexdigest()[:20]
    target = cache / f"base-{name}.ext4"
    async with building(cache / f"base-{name}.lock"):
        if not target.is_file():
            size_mb, inodes = _sized(lower, 64)
            await _mkfs(target, lower, size_mb, inodes, "tartarus-base")
            (cache / f"base-{name}{SOURCE}").write_text(str(lower.resolve()))
    return target


async def bind_image(cache: Path, source: Path) -> Path:
    """A read-only bind as an ext4 image, cached by its files' names, sizes and times."""
    paths = sorted(p for p in source.rglob("*"))
    name = _stamp(source, *paths)
    target = cache / f"bind-{name}.ext4"
    async with building(cache / f"bind-{name}.lock"):
        if not target.is_file():
            size_mb, inodes = _sized(source, 8)
            await _mkfs(target, source, size_mb, inodes, "tartarus-bind")
        else:
            _used(target)
    return target


def sweep(cache: Path, keep: int = 4, idle_s: float = 3600.0) -> list[str]:
    """Remove what no sandbox can use again: the base image of a template image that is
    gone (removed or rebuilt: images are content-addressed), and bind images (the guest
    agent's files) and initramfs files (a kernel's) that were superseded, beyond the `keep`
    newest and unused for `idle_s`. A running VM keeps its open files; a template snapshot
    made on a removed file is never matched again (its plan key has the file's time). What
    another engine is building (its lock held) is left for the next sweep."""
    removed = []
    for base in cache.glob("base-*.ext4"):
        source = base.with_suffix(SOURCE)
        with contextlib.suppress(OSError), _unless_locked(base.with_suffix(".lock")):
            if source.is_file() and not Path(source.read_text()).is_dir():
                base.unlink()
                source.unlink()
                removed.append(base.name)
                base.with_suffix(".lock").unlink()
    for pattern in ("bind-*.ext4", "initramfs-*.cpio"):
        found = []
        for path in cache.glob(pattern):
            with contextlib.suppress(OSError):
                found.append((path.stat().st_atime, path))
        found.sort(reverse=True)
        for used, path in found[keep:]:
            if time.time() - used > idle_s:
                with contextlib.suppress(OSError), _unless_locked(path.with_suffix(".lock")):
                    path.unlink()
                    path.with_suffix(".lock").unlink()
                    removed.append(path.name)
    return removed


def _used(path: Path) -> None:
    """Mark a cached file used (its access time: its modification time is in plan keys)."""
    with contextlib.suppress(OSError):
        os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))


async def writable_layer(
    target: Path,
    upper: Path | None,
    disk_mb: int,
    boot: Mapping[str, object],
    binds: list[tuple[str, str]],
) -> None:
    """The VM's own ext4 of `disk_mb`: overlay upper/work dirs (seeded from the host layer's
    upper dir), the boot configuration and the bind list for the initramfs."""
    stage = target.with_name("stage")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        (stage / "work").mkdir(parents=True)
        if upper is not None and upper.is_dir():
            _copy_unshifted(upper, stage / "upper")
        else:
            (stage / "upper").mkdir()
        (stage / BOOT_FILE).write_text(json.dumps(boot))
        (stage / BINDS_FILE).write_text("".join(f"{n} {d}\n" for n, d in binds))
        await _mkfs(target, stage, disk_mb, max(4096, disk_mb * 64), "tartarus-rw")
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _copy_unshifted(src: Path, dst: Path) -> None:
    """Copy the host layer (only what the engine pre-created: a few directories), giving
    back the ids a container's user namespace shifted (host 101000 is the guest's 1000)."""
    shutil.copytree(src, dst, symlinks=True)
    for dirpath, dirnames, filenames in os.walk(src):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            uid, gid = st.st_uid, st.st_gid
            if HOST_UID_BASE <= uid < HOST_UID_BASE + ID_RANGE:
                uid -= HOST_UID_BASE
            if HOST_UID_BASE <= gid < HOST_UID_BASE + ID_RANGE:
                gid -= HOST_UID_BASE
            os.lchown(os.path.join(dst, os.path.relpath(path, src)), uid, gid)


def overlay_dirs(rootfs: Path) -> tuple[list[Path], Path | None]:
    """The lower dirs and upper dir of the overlay mounted at `rootfs` (the engine's Lethe
    layer), read from this thread's mount table (the engine's private namespace)."""
    with open("/proc/thread-self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] != str(rootfs) or " - overlay " not in line:
                continue
            options = line.split(" - overlay ", 1)[1].split()[-1].split(",")
            opts = dict(o.partition("=")[::2] for o in options)
            lowers = [Path(p) for p in opts.get("lowerdir", "").split(":") if p]
            upper = opts.get("upperdir")
            return lowers, Path(upper) if upper else None
    return [Path(rootfs)], None
