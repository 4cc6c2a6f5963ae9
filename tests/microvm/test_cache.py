"""The microvm runtime's cache of disk images lets go of what no sandbox can use again."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
from pathlib import Path

from tartarus.runtimes import microvm_image


async def test_a_removed_template_image_takes_its_base_image_along(tmp_path: Path) -> None:
    cache, kept_root, gone_root = tmp_path / "cache", tmp_path / "kept", tmp_path / "gone"
    for root in (kept_root, gone_root):
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "hostname").write_text(root.name)
    kept = await microvm_image.base_image(cache, kept_root)
    gone = await microvm_image.base_image(cache, gone_root)
    legacy = cache / "base-0123456789abcdef0123.ext4"  # made before sources were recorded
    legacy.write_bytes(b"")
    assert microvm_image.sweep(cache) == []
    for p in gone_root.rglob("*"):
        if p.is_file():
            p.unlink()
    for d in sorted(gone_root.rglob("*"), reverse=True):
        d.rmdir()
    gone_root.rmdir()  # as `template rm` removes an image
    with open(gone.with_suffix(".lock"), "a") as lock:  # another engine works on it
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert microvm_image.sweep(cache) == []
    assert microvm_image.sweep(cache) == [gone.name]
    assert not gone.exists() and not list(cache.glob(f"{gone.stem}.*"))
    assert kept.exists() and legacy.exists()


def test_superseded_binds_go_once_idle_and_beyond_the_newest(tmp_path: Path) -> None:
    now = time.time()
    ages = {"a": 10, "b": 20, "c": 30, "d": 40, "e": 50, "f": 7600, "g": 7700}
    for name, age in ages.items():
        path = tmp_path / f"bind-{name}.ext4"
        path.write_bytes(b"x")
        os.utime(path, (now - age, now - 10**6))  # used `age` s ago; made long before
    removed = microvm_image.sweep(tmp_path, keep=4, idle_s=3600)
    assert sorted(removed) == ["bind-f.ext4", "bind-g.ext4"]  # e: beyond 4, but in use
    assert sorted(p.name for p in tmp_path.glob("bind-*")) == [f"bind-{n}.ext4" for n in "abcde"]
    assert not list(tmp_path.glob("*.lock"))


def test_creates_of_a_new_template_at_once_wait_for_one_build(tmp_path: Path) -> None:
    # a pool's first fill: its creates ask for the same base and guest-files images together,
    # and the one waiting must not block the event loop the builder needs (it did: a hang)
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("sandbox")
    cache = tmp_path / "cache"

    async def together() -> list[Path]:
        return list(
            await asyncio.gather(
                *(microvm_image.base_image(cache, root) for _ in range(3)),
                *(microvm_image.bind_image(cache, root) for _ in range(3)),
            )
        )

    built: list[list[Path]] = []
    worker = threading.Thread(target=lambda: built.append(asyncio.run(together())), daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "the creates deadlocked on the cache's build locks"
    assert len(set(built[0][:3])) == 1 and len(set(built[0][3:])) == 1
    assert len(list(cache.glob("*.ext4"))) == 2  # each built once
