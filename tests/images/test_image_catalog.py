from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tartarus.errors import BuildError, InvalidRequestError, NotFoundError
from tartarus.images import builder
from tartarus.images.cache import ImageCache, ImageInfo
from tartarus.images.catalog import TemplateCatalog
from tartarus.models.template import TemplateSpec
from tartarus.store.database import Database


@pytest.fixture
def catalog(tmp_path: Path, cache: ImageCache) -> TemplateCatalog:
    return TemplateCatalog(Database(tmp_path / "state" / "t.db"), cache, "http://invalid.test")


@pytest.fixture
def fake_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace debootstrap with an instant fake that commits an empty rootfs."""
    built: list[str] = []

    def fake_build(spec: TemplateSpec, cache: ImageCache, **kw: Any) -> ImageInfo:
        h = spec.content_hash()
        if cache.exists(h) and not kw.get("force"):
            return cache.info(h)
        built.append(spec.name)
        work = cache.new_workdir(h)
        (work / "rootfs").mkdir()
        info = ImageInfo(
            hash=h,
            template=spec.name,
            source="build",
            created_at=datetime.now(UTC),
            size_bytes=0,
            python=None,
            spec=spec,
        )
        return cache.commit(work, info)

    monkeypatch.setattr(builder, "build", fake_build)
    return built


def test_builtins_resolve_unbuilt(catalog: TemplateCatalog) -> None:
    tpl = catalog.resolve("python")
    assert tpl.source == "builtin" and tpl.image_hash is None and not tpl.built
    assert [t.name for t in catalog.list()] == ["base", "python", "python-ds"]


def test_unknown_name_lists_available(catalog: TemplateCatalog) -> None:
    with pytest.raises(NotFoundError) as exc:
        catalog.resolve("x")
    assert str(exc.value) == "unknown template 'x'; available: base, python, python-ds"


def test_ensure_built_builds_once(catalog: TemplateCatalog, fake_builds: list[str]) -> None:
    info = catalog.ensure_built("base")
    assert info.hash == catalog.resolve("base").spec.content_hash()
    assert catalog.resolve("base").image_hash == info.hash
    assert catalog.ensure_built("base").hash == info.hash
    assert fake_builds == ["base"]
    catalog.ensure_built("base", force=True)
    assert fake_builds == ["base", "base"]


def test_register_file_and_remove(
    catalog: TemplateCatalog, fake_builds: list[str], tmp_path: Path
) -> None:
    spec_file = tmp_path / "mine.yaml"
    spec_file.write_text("description: mine\napt: [curl]\n")
    info = catalog.register_file(spec_file)
    tpl = catalog.resolve("mine")
    assert tpl.source == "file" and tpl.image_hash == info.hash
    assert [t.name for t in catalog.list()] == ["base", "mine", "python", "python-ds"]
    with pytest.raises(NotFoundError, match="available: base, mine, python"):
        catalog.resolve("nope")
    # a second template sharing the image keeps it alive
    twin = tmp_path / "twin.yaml"
    twin.write_text("apt: [curl]\n")
    catalog.register_file(twin)
    assert fake_builds == ["mine"]
    assert catalog.remove("mine") is False
    assert catalog.cache.exists(info.hash)
    assert catalog.remove("twin") is True
    assert not catalog.cache.exists(info.hash)
    with pytest.raises(NotFoundError):
        catalog.remove("twin")


def test_builtin_names_are_reserved(catalog: TemplateCatalog, tmp_path: Path) -> None:
    spec_file = tmp_path / "python.yaml"
    spec_file.write_text("description: impostor\n")
    with pytest.raises(InvalidRequestError, match="built-in"):
        catalog.register_file(spec_file)
    with pytest.raises(InvalidRequestError, match="built-in"):
        catalog.register_oci(tmp_path, "base")
    with pytest.raises(InvalidRequestError, match="cannot be removed"):
        catalog.remove("python")


def test_register_oci(catalog: TemplateCatalog, busybox_layout: Path) -> None:
    info = catalog.register_oci(busybox_layout, "bb")
    tpl = catalog.resolve("bb")
    assert tpl.source == "oci" and tpl.image_hash == info.hash
    assert catalog.ensure_built("bb").hash == info.hash
    # a second name for the same image, then the image vanishes
    catalog.register_oci(busybox_layout, "bb2")
    assert catalog.resolve("bb2").spec.name == "bb2"
    assert catalog.remove("bb") is False
    catalog.cache.remove(info.hash)
    assert catalog.resolve("bb2").image_hash is None
    with pytest.raises(BuildError, match="import it again"):
        catalog.ensure_built("bb2")
