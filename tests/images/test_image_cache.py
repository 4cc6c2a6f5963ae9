from __future__ import annotations

import os
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tartarus.errors import NotFoundError
from tartarus.images.cache import ImageCache, ImageInfo, find_python, resolve_in_root
from tartarus.models.template import TemplateSpec

H = "0123456789abcdef0123456789abcdef"


def fake_image(cache: ImageCache, h: str = H, *, python: bool = True) -> ImageInfo:
    work = cache.new_workdir(h)
    root = work / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    if python:
        (root / "usr" / "bin" / "python3.11").write_bytes(b"x" * 1000)
        (root / "usr" / "bin" / "python3").symlink_to("/usr/bin/python3.11")  # absolute link
    info = ImageInfo(
        hash=h,
        template="t",
        source="build",
        created_at=datetime.now(UTC),
        size_bytes=1000,
        python=find_python(root),
        spec=TemplateSpec(name="t"),
    )
    return cache.commit(work, info)


def test_commit_info_list_remove(cache: ImageCache) -> None:
    assert cache.list() == []
    assert not cache.exists(H)
    info = fake_image(cache)
    assert cache.exists(H)
    assert info.has_python and info.python == "/usr/bin/python3"
    assert info.rootfs == cache.rootfs(H) == cache.image_dir / H / "rootfs"
    assert (cache.image_dir / H / "image.json").is_file()
    assert "rootfs" not in info.model_dump(mode="json")
    for d in (cache.image_dir, cache.image_dir / H, cache.rootfs(H)):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755
    assert [i.hash for i in cache.list()] == [H]
    assert not [p for p in cache.image_dir.iterdir() if p.name.startswith(".tmp-")]
    assert cache.remove(H)
    assert not cache.exists(H)
    assert not cache.remove(H)
    with pytest.raises(NotFoundError):
        cache.rootfs(H)
    with pytest.raises(NotFoundError):
        cache.info(H)


def test_no_python(cache: ImageCache) -> None:
    assert not fake_image(cache, python=False).has_python


def test_incomplete_dirs_are_ignored_and_collected(cache: ImageCache) -> None:
    fake_image(cache)
    incomplete = cache.image_dir / ("f" * 32)
    (incomplete / "rootfs").mkdir(parents=True)
    stale = cache.new_workdir("e" * 32)
    assert not cache.exists("f" * 32)
    assert [i.hash for i in cache.list()] == [H]
    removed = cache.gc()
    assert set(removed) == {incomplete, stale}
    assert cache.exists(H)


def test_gc_spares_a_build_in_progress(cache: ImageCache) -> None:
    with cache.lock("e" * 32):
        work = cache.new_workdir("e" * 32)
        assert cache.gc() == []
        assert work.exists()


def test_lock_serialises_builders(cache: ImageCache) -> None:
    events: list[str] = []

    def second() -> None:
        with cache.lock(H):
            events.append("second")

    with cache.lock(H):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.2)
        events.append("first done")
    t.join(5)
    assert events == ["first done", "second"]


def test_invalid_hash_is_rejected(cache: ImageCache) -> None:
    assert not cache.exists("../etc")
    with pytest.raises(NotFoundError):
        cache.rootfs("../../etc")


def test_resolve_in_root_keeps_absolute_links_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr" / "bin" / "python3").symlink_to("/etc/passwd")  # exists on the host only
    assert resolve_in_root(root, "/bin/python3") is None
    assert find_python(root) is None
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("")
    assert resolve_in_root(root, "/bin/python3") == root / "etc" / "passwd"
    (root / "loop").symlink_to("loop")
    assert resolve_in_root(root, "/loop") is None
    assert os.path.exists("/etc/passwd")
