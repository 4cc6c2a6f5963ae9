"""Real debootstrap builds (slow: ~30 s for the first, with a warm .deb cache)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tartarus.errors import BuildError
from tartarus.images import builder
from tartarus.images.builder import ImageBuildError, build
from tartarus.images.cache import ImageCache, ImageInfo
from tartarus.models.template import TemplateSpec

MIRROR = "http://deb.debian.org/debian"
TINY = TemplateSpec(name="tiny", description="test", files={"/etc/tartarus-test": "hello\n"})

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, deb_cache: Path
) -> tuple[ImageCache, ImageInfo]:
    cache = ImageCache(tmp_path_factory.mktemp("build") / "images")
    steps: list[tuple[str, float | None]] = []
    info = build(
        TINY, cache, mirror=MIRROR, deb_cache=deb_cache, progress=lambda s, f: steps.append((s, f))
    )
    fractions = [f for _, f in steps if f is not None]
    assert fractions == sorted(fractions), "progress must not go backwards"
    assert fractions[-1] == 1.0
    assert any(s.startswith("debootstrap: ") for s, _ in steps)
    return cache, info


def no_leftovers(cache: ImageCache, mounts: Callable[[Path], list[str]]) -> None:
    assert [p.name for p in cache.image_dir.iterdir() if p.name.startswith(".tmp-")] == []
    assert mounts(cache.image_dir) == []


def test_tiny_build(built: tuple[ImageCache, ImageInfo]) -> None:
    cache, info = built
    root = cache.rootfs(info.hash)
    assert info.hash == TINY.content_hash()
    assert info.has_python and info.python == "/usr/bin/python3"
    assert (root / "usr" / "bin" / "python3").exists()
    passwd = (root / "etc" / "passwd").read_text().splitlines()
    assert "user:x:1000:1000::/home/user:/bin/sh" in passwd
    assert "user:x:1000:" in (root / "etc" / "group").read_text().splitlines()
    assert (root / "home" / "user").stat().st_uid == 1000
    for d in (".tartarus", "proc", "sys", "dev", "tmp", "run"):
        assert (root / d).is_dir(), d
    assert (root / "etc" / "hostname").read_text() == "sandbox\n"
    assert (root / "etc" / "tartarus-test").read_text() == "hello\n"
    assert (root / "etc" / "resolv.conf").read_text() == ""
    assert not list((root / "var" / "cache" / "apt" / "archives").glob("*.deb"))
    assert not list((root / "usr" / "share" / "doc").iterdir())
    data = json.loads((cache.image_dir / info.hash / "image.json").read_text())
    assert data["hash"] == info.hash and data["source"] == "build"
    assert data["python"] == "/usr/bin/python3" and data["spec"]["name"] == "tiny"
    assert 50e6 < data["size_bytes"] < 250e6
    out = subprocess.run(
        ["chroot", str(root), "python3", "-c", "import sys; print(sys.version_info[0])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "3"


def test_second_build_is_a_cache_hit(built: tuple[ImageCache, ImageInfo], deb_cache: Path) -> None:
    cache, info = built
    renamed = TINY.model_copy(update={"name": "other", "env": {"A": "1"}})
    started = time.monotonic()
    again = build(renamed, cache, mirror="http://invalid.test", deb_cache=deb_cache)
    assert time.monotonic() - started < 1.0
    assert again.hash == info.hash and again.created_at == info.created_at


def test_failing_debootstrap_leaves_nothing(
    tmp_path: Path, deb_cache: Path, mounts: Callable[[Path], list[str]]
) -> None:
    cache = ImageCache(tmp_path / "images")
    spec = TemplateSpec(name="broken", apt=("tartarus-no-such-package",))
    with pytest.raises(BuildError) as exc:
        build(spec, cache, mirror=MIRROR, deb_cache=deb_cache)
    err = exc.value
    assert isinstance(err, ImageBuildError) and err.step == "debootstrap"
    assert "failed at step 'debootstrap'" in str(err) and "\n" not in str(err)
    assert any("tartarus-no-such-package" in line for line in err.output)
    assert err.log is not None and "tartarus-no-such-package" in err.log.read_text()
    assert not cache.exists(spec.content_hash())
    no_leftovers(cache, mounts)


def test_failing_pip_unmounts_proc(
    built: tuple[ImageCache, ImageInfo],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mounts: Callable[[Path], list[str]],
) -> None:
    """pip runs with /proc mounted in the chroot; a failure must unmount it and clean up."""
    src_cache, info = built

    def copy_rootfs(_spec: TemplateSpec, root: Path, *_a: object, **_kw: object) -> None:
        subprocess.run(["cp", "-a", str(src_cache.rootfs(info.hash)), str(root)], check=True)

    monkeypatch.setattr(builder, "_debootstrap", copy_rootfs)
    cache = ImageCache(tmp_path / "images")
    seen_mounts: list[str] = []
    real_run = builder._Runner.run

    def spying_run(self: builder._Runner, step: str, argv: list[str], **kw: object) -> None:
        seen_mounts.extend(mounts(cache.image_dir))
        real_run(self, step, argv, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(builder._Runner, "run", spying_run)
    spec = TemplateSpec(name="pipfail", pip=("tartarus-no-such-dist",))
    with pytest.raises(ImageBuildError) as exc:
        build(spec, cache, mirror=MIRROR)
    assert exc.value.step == "pip install"
    assert "No module named pip" in str(exc.value)  # the tiny image has no pip
    assert any(p.endswith("/rootfs/proc") for p in seen_mounts)
    no_leftovers(cache, mounts)
