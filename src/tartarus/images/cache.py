"""The content-addressed image cache (Erebus): one read-only rootfs per hash, shared by sandboxes.

Layout::

    image_dir/<hash>/rootfs/       the root filesystem (the engine's read-only lower layer)
    image_dir/<hash>/image.json    ImageInfo; written before the directory is renamed into place
    image_dir/.tmp-<hash>-<rand>/  a build in progress (ignored, garbage-collected when stale)
    image_dir/.lock-<hash>         flock held while one process builds or removes <hash>

A directory is only ever complete or absent, because builds happen in a temp dir that is renamed
into place atomically; concurrent builders of the same hash serialise on the lock file, and the
second one finds the cache hit. Everything is 0755 because the sandbox's root maps to an
unprivileged host uid that must be able to traverse the image.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tartarus.errors import NotFoundError
from tartarus.models.template import TemplateSpec

HASH_RE = re.compile(r"^[a-z0-9][a-z0-9-]{7,63}$")
PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")
INFO_FILE = "image.json"


class ImageInfo(BaseModel):
    """What the cache knows about one complete image (the content of image.json)."""

    model_config = ConfigDict(frozen=True)

    hash: str
    template: str
    source: Literal["build", "oci"]
    created_at: datetime
    size_bytes: int
    python: str | None = Field(description="absolute path of python3 inside the rootfs, or null")
    spec: TemplateSpec
    rootfs: Path | None = Field(default=None, exclude=True, description="filled in on load")

    @property
    def has_python(self) -> bool:
        return self.python is not None


def validate_hash(h: str) -> str:
    if not HASH_RE.match(h):
        raise NotFoundError(f"invalid image hash {h!r}")
    return h


def resolve_in_root(root: Path, path: str, *, max_links: int = 40) -> Path | None:
    """Resolve `path` as if `root` were `/` (absolute symlinks stay inside); None if missing."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = root.joinpath(*current, part)
        if candidate.is_symlink():
            links += 1
            if links > max_links:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        if not candidate.exists():
            return None
        current.append(part)
    return root.joinpath(*current)


def find_python(rootfs: Path) -> str | None:
    """The first python3 candidate that resolves to a regular file inside `rootfs`."""
    for candidate in PYTHON_CANDIDATES:
        found = resolve_in_root(rootfs, candidate)
        if found is not None and found.is_file():
            return candidate
    return None


def tree_size(root: Path) -> int:
    """Bytes used by regular files under `root`, hard links counted once, symlinks not followed."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_size
    return total


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` (from /proc/self/mountinfo), deepest first."""
    prefix = str(path.resolve())
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5:
                continue
            point = fields[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_under(path: Path) -> None:
    """Detach every mount below `path`, so removing it can never walk into /proc or /dev."""
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def remove_tree(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():  # e.g. immutable files: try once more, loudly
        shutil.rmtree(path)


class ImageCache:
    def __init__(self, image_dir: Path | str) -> None:
        self.image_dir = Path(image_dir).absolute()

    # -- layout -------------------------------------------------------------------------------

    def _ensure_dir(self) -> None:
        self.image_dir.mkdir(parents=True, exist_ok=True)
        self.image_dir.chmod(0o755)

    def path(self, h: str) -> Path:
        return self.image_dir / validate_hash(h)

    def rootfs(self, h: str) -> Path:
        """The rootfs directory of a complete image; NotFoundError if it is not in the cache."""
        if not self.exists(h):
            raise NotFoundError(f"image {h} is not in the cache")
        return self.path(h) / "rootfs"

    def exists(self, h: str) -> bool:
        try:
            return (self.path(h) / INFO_FILE).is_file()
        except NotFoundError:
            return False

    def info(self, h: str) -> ImageInfo:
        info_path = self.path(h) / INFO_FILE
        try:
            data = json.loads(info_path.read_text(encoding="utf-8"))
            info = ImageInfo.model_validate(data)
        except FileNotFoundError:
            raise NotFoundError(f"image {h} is not in the cache") from None
        except (ValueError, ValidationError) as err:
            raise NotFoundError(f"image {h} has an unreadable {INFO_FILE}: {err}") from None
        return info.model_copy(update={"rootfs": self.path(h) / "rootfs"})

    def list(self) -> list[ImageInfo]:
        if not self.image_dir.is_dir():
            return []
        infos: list[ImageInfo] = []
        for entry in sorted(self.image_dir.iterdir()):
            if entry.name.startswith(".") or not HASH_RE.match(entry.name):
                continue
            if not (entry / INFO_FILE).is_file():
                continue
            with contextlib.suppress(NotFoundError):
                infos.append(self.info(entry.name))
        return infos

    # -- building -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, h: str) -> Iterator[None]:
        """Exclusive per-hash lock across processes (blocks until the holder is done)."""
        self._ensure_dir()
        lock_path = self.image_dir / f".lock-{validate_hash(h)}"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def new_workdir(self, h: str) -> Path:
        """A fresh temp dir for building `h`; caller holds the lock and calls commit or discard."""
        self._ensure_dir()
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{validate_hash(h)}-", dir=self.image_dir))
        work.chmod(0o755)
        return work

    def commit(self, work: Path, info: ImageInfo) -> ImageInfo:
        """Write image.json into `work` and rename it into place (replacing an older build)."""
        (work / "rootfs").chmod(0o755)
        data = info.model_dump(mode="json")
        tmp_info = work / f"{INFO_FILE}.tmp"
        tmp_info.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp_info.chmod(0o644)
        os.replace(tmp_info, work / INFO_FILE)
        target = self.path(info.hash)
        old: Path | None = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".tmp-{info.hash}-old-", dir=self.image_dir))
            os.replace(target, old / "image")
        os.replace(work, target)
        if old is not None:
            remove_tree(old)
        return self.info(info.hash)

    def discard(self, work: Path) -> None:
        remove_tree(work)

    # -- removal and garbage collection -------------------------------------------------------

    def remove(self, h: str) -> bool:
        """Remove one image; True if it existed. Running sandboxes must not use it any more."""
        target = self.path(h)
        with self.lock(h):
            if not target.exists():
                return False
            doomed = Path(tempfile.mkdtemp(prefix=f".tmp-{h}-rm-", dir=self.image_dir))
            os.replace(target, doomed / "image")
            remove_tree(doomed)
        return True

    def gc(self) -> builtins.list[Path]:
        """Remove stale temp dirs and incomplete image dirs (not locked by a live builder)."""
        removed: builtins.list[Path] = []
        if not self.image_dir.is_dir():
            return removed
        for entry in sorted(self.image_dir.iterdir()):
            if not entry.is_dir() or entry.is_symlink():
                continue
            if entry.name.startswith(".tmp-"):
                h = entry.name[len(".tmp-") :].split("-")[0]
                if h == "oci" and len(entry.name.split("-")) > 2:
                    h = "oci-" + entry.name.split("-")[2]
            elif HASH_RE.match(entry.name) and not (entry / INFO_FILE).exists():
                h = entry.name
            else:
                continue
            if not HASH_RE.match(h):
                continue
            lock_path = self.image_dir / f".lock-{h}"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live build owns it
                remove_tree(entry)
                removed.append(entry)
            finally:
                os.close(fd)
        return removed
