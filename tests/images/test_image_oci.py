from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tartarus.errors import BuildError, InvalidRequestError, NotFoundError
from tartarus.images.cache import ImageCache
from tartarus.images.oci import import_image


def test_import_layout_dir(cache: ImageCache, busybox_layout: Path) -> None:
    steps: list[str] = []
    info = import_image(busybox_layout, "bb", cache, lambda s, _f: steps.append(s))
    assert info.hash.startswith("oci-") and len(info.hash) == 32
    assert info.source == "oci" and info.template == "bb"
    assert not info.has_python and info.python is None
    root = cache.rootfs(info.hash)
    assert (root / "bin" / "busybox").is_file()
    assert (root / "bin" / "sh").is_symlink()
    for d in (".tartarus", "proc", "sys", "dev", "tmp"):
        assert (root / d).is_dir()
    assert info.spec.name == "bb"
    assert info.spec.env == {"PATH": "/bin"}
    assert str(busybox_layout) in info.spec.description
    assert steps
    # the same image again, with an explicit tag: a cache hit
    again = import_image(f"{busybox_layout}:t", "bb2", cache)
    assert again.hash == info.hash and again.created_at == info.created_at
    leftovers = [p.name for p in cache.image_dir.iterdir() if p.name.startswith((".tmp", ".imp"))]
    assert leftovers == []


@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive"])
def test_import_tar_matches_layout_hash(
    cache: ImageCache,
    busybox_layout: Path,
    tmp_path: Path,
    transport: str,
    export_image: Callable[[Path, str, str, Path], Path],
) -> None:
    tar = export_image(busybox_layout, "t", transport, tmp_path / "img.tar")
    info = import_image(tar, "bb", cache)
    assert (cache.rootfs(info.hash) / "bin" / "busybox").is_file()
    assert import_image(tar, "bb", cache).created_at == info.created_at  # re-import: cache hit
    # same layers in another format: same image
    assert import_image(busybox_layout, "bb", cache).hash == info.hash


def test_different_images_get_different_hashes(
    cache: ImageCache, tmp_path: Path, layout_factory: Callable[[Path], Path]
) -> None:
    a = layout_factory(tmp_path / "a")
    b = layout_factory(tmp_path / "b")
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "hello").write_text("hi")
    subprocess.run(
        ["umoci", "insert", "--image", f"{b}:t", str(tmp_path / "extra"), "/opt"], check=True
    )
    assert import_image(a, "a", cache).hash != import_image(b, "b", cache).hash


def test_errors(cache: ImageCache, busybox_layout: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such file or directory"):
        import_image(tmp_path / "missing", "x", cache)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InvalidRequestError, match="unrecognised image format"):
        import_image(junk, "x", cache)
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(InvalidRequestError, match=r"no index\.json"):
        import_image(empty, "x", cache)
    with pytest.raises(NotFoundError, match="no image tagged 'nope'; tags: t"):
        import_image(f"{busybox_layout}:nope", "x", cache)
    with pytest.raises(InvalidRequestError, match="name"):
        import_image(busybox_layout, "Bad Name", cache)
    # a corrupt layer makes umoci fail: a BuildError naming the tool, nothing left behind
    for blob in (busybox_layout / "blobs" / "sha256").iterdir():
        if blob.stat().st_size > 100_000:
            blob.write_bytes(b"garbage")
    with pytest.raises(BuildError, match="umoci unpack failed") as exc:
        import_image(busybox_layout, "x", cache)
    assert "\n" not in str(exc.value)
    assert [p for p in cache.image_dir.iterdir() if p.name.startswith((".tmp", ".imp"))] == []
    assert cache.list() == []
