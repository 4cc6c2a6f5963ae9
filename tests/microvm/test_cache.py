"""The microvm runtime's cache of disk images lets go of what no sandbox can use again."""

from __future__ import annotations

import fcntl
import os
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
