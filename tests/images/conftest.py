"""Fixtures for the image tests: a tiny busybox OCI image made with umoci, and the deb cache."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tartarus.images.cache import ImageCache


@pytest.fixture(scope="session")
def deb_cache() -> Path:
    """Shared across runs so real builds only download Release files after the first time."""
    path = Path(os.environ.get("TARTARUS_TEST_DEB_CACHE") or "/var/tmp/tartarus-debs")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def cache(tmp_path: Path) -> ImageCache:
    return ImageCache(tmp_path / "images")


def make_busybox_layout(dest: Path, tag: str = "t") -> Path:
    """An OCI layout at `dest` holding a busybox-only image tagged `tag` (built with umoci)."""
    src = dest.parent / f"{dest.name}-src"
    (src / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", src / "bin" / "busybox")
    for applet in ("sh", "ls", "cat", "echo"):
        (src / "bin" / applet).symlink_to("busybox")
    subprocess.run(["umoci", "init", "--layout", str(dest)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{dest}:{tag}"], check=True)
    subprocess.run(["umoci", "insert", "--image", f"{dest}:{tag}", str(src), "/"], check=True)
    subprocess.run(
        ["umoci", "config", "--image", f"{dest}:{tag}", "--config.env", "PATH=/bin"], check=True
    )
    return dest


@pytest.fixture
def busybox_layout(tmp_path: Path) -> Path:
    return make_busybox_layout(tmp_path / "layout")


@pytest.fixture
def layout_factory() -> Callable[[Path], Path]:
    return make_busybox_layout


@pytest.fixture
def export_image() -> Callable[[Path, str, str, Path], Path]:
    return skopeo_export


@pytest.fixture
def mounts() -> Callable[[Path], list[str]]:
    return mounts_below


def skopeo_export(layout: Path, tag: str, transport: str, dest: Path) -> Path:
    subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            f"oci:{layout}:{tag}",
            f"{transport}:{dest}:bb:{tag}"
            if transport == "docker-archive"
            else f"{transport}:{dest}",
        ],
        check=True,
    )
    return dest


def mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve())
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]
