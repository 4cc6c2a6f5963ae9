"""One view of every template: the built-ins shipped in the package plus the user's registered ones.

The catalog is where a template name becomes a spec and (if built) an image hash; it never
builds on lookup, so `resolve` is cheap and callers decide when to pay for `ensure_built`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tartarus.config import Settings
from tartarus.errors import BuildError, InvalidRequestError, NotFoundError
from tartarus.images import builder, oci
from tartarus.images.builder import ProgressFn
from tartarus.images.cache import ImageCache, ImageInfo, remove_tree
from tartarus.images.specs import builtin_specs, load_spec_file
from tartarus.models.template import TemplateSpec
from tartarus.store.database import Database
from tartarus.store.snapshots import SnapshotRepository
from tartarus.store.templates import TemplateRecord, TemplateRepository

SOURCE_BUILTIN = "builtin"
SOURCE_FILE = "file"
SOURCE_OCI = "oci"


@dataclass(frozen=True)
class ResolvedTemplate:
    spec: TemplateSpec
    image_hash: str | None  # None: not built (or, for OCI, the image files are gone)
    source: str  # builtin | file | oci

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def built(self) -> bool:
        return self.image_hash is not None


class TemplateCatalog:
    def __init__(
        self,
        db: Database,
        cache: ImageCache,
        mirror: str,
        *,
        deb_cache: Path | None = None,
        snapshots_dir: Path | None = None,
    ) -> None:
        self.repo = TemplateRepository(db)
        self.snapshots = SnapshotRepository(db)
        self.snapshots_dir = snapshots_dir  # None: snapshot files are not this catalog's
        self.cache = cache
        self.mirror = mirror
        self.deb_cache = deb_cache

    @classmethod
    def from_settings(cls, settings: Settings, db: Database | None = None) -> TemplateCatalog:
        return cls(
            db or Database(settings.db_path),
            ImageCache(settings.image_dir),
            settings.mirror,
            snapshots_dir=settings.snapshots_dir,
        )

    # -- lookup -------------------------------------------------------------------------------

    def _image_of(self, spec: TemplateSpec, source: str, stored: str | None) -> str | None:
        h = stored if source == SOURCE_OCI else spec.content_hash()
        return h if h is not None and self.cache.exists(h) else None

    def _from_record(self, rec: TemplateRecord) -> ResolvedTemplate:
        return ResolvedTemplate(
            rec.spec, self._image_of(rec.spec, rec.source, rec.image), rec.source
        )

    def resolve(self, name: str) -> ResolvedTemplate:
        builtins = builtin_specs()
        if name in builtins:
            spec = builtins[name]
            return ResolvedTemplate(
                spec, self._image_of(spec, SOURCE_BUILTIN, None), SOURCE_BUILTIN
            )
        rec = self.repo.get(name)
        if rec is None:
            names = ", ".join(sorted({*builtins, *(r.spec.name for r in self.repo.list())}))
            raise NotFoundError(f"unknown template '{name}'; available: {names}")
        return self._from_record(rec)

    def list(self) -> list[ResolvedTemplate]:
        items = [
            ResolvedTemplate(s, self._image_of(s, SOURCE_BUILTIN, None), SOURCE_BUILTIN)
            for s in builtin_specs().values()
        ]
        items += [
            self._from_record(r) for r in self.repo.list() if r.spec.name not in builtin_specs()
        ]
        return sorted(items, key=lambda t: t.name)

    # -- building and registering -------------------------------------------------------------

    def _build(self, spec: TemplateSpec, progress: ProgressFn | None, force: bool) -> ImageInfo:
        return builder.build(
            spec,
            self.cache,
            mirror=self.mirror,
            progress=progress,
            force=force,
            deb_cache=self.deb_cache,
        )

    def ensure_built(
        self, name: str, progress: ProgressFn | None = None, *, force: bool = False
    ) -> ImageInfo:
        """The template's image, building it first if needed (OCI images cannot be rebuilt)."""
        tpl = self.resolve(name)
        if tpl.source == SOURCE_OCI:
            if tpl.image_hash is None:
                raise BuildError(f"the image of template '{name}' is missing; import it again")
            return self.cache.info(tpl.image_hash)
        if tpl.image_hash is not None and not force:
            return self.cache.info(tpl.image_hash)
        return self._build(tpl.spec, progress, force)

    def _check_user_name(self, name: str) -> None:
        if name in builtin_specs():
            raise InvalidRequestError(f"'{name}' is a built-in template; choose another name")

    def register_file(
        self, path: Path | str, progress: ProgressFn | None = None, *, force: bool = False
    ) -> ImageInfo:
        """Load a YAML spec, build it, and store it as a user template (source 'file')."""
        spec = load_spec_file(path)
        self._check_user_name(spec.name)
        info = self._build(spec, progress, force)
        self.repo.put(spec, info.hash, SOURCE_FILE)
        return info

    def register_oci(
        self, source: Path | str, name: str, progress: ProgressFn | None = None
    ) -> ImageInfo:
        """Import an OCI image and store it as a user template (source 'oci')."""
        self._check_user_name(name)
        info = oci.import_image(source, name, self.cache, progress)
        spec = info.spec if info.spec.name == name else info.spec.model_copy(update={"name": name})
        self.repo.put(spec, info.hash, SOURCE_OCI)
        return info

    def remove(self, name: str) -> bool:
        """Delete a user template; its image goes too unless another template uses it.

        Returns True if image files were removed.
        """
        if name in builtin_specs():
            raise InvalidRequestError(f"'{name}' is a built-in template and cannot be removed")
        rec = self.repo.get(name)
        if rec is None:
            self.resolve(name)  # raises the NotFoundError listing what exists
            return False
        h = _image_key(rec)
        self.repo.delete(name)
        self._remove_snapshots(name)
        if h is None:
            return False
        in_use: set[str | None] = {s.content_hash() for s in builtin_specs().values()}
        in_use |= {_image_key(other) for other in self.repo.list()}
        if h in in_use:
            return False
        return self.cache.remove(h)

    def _remove_snapshots(self, template: str) -> None:
        """Snapshots of a removed template could not start anything: records and files go."""
        for snap in self.snapshots.list(any_tenant=True):
            if snap.template == template:
                self.snapshots.delete(snap.id)
                if self.snapshots_dir is not None:
                    remove_tree(self.snapshots_dir / snap.id)


def _image_key(rec: TemplateRecord) -> str | None:
    """The cache hash a user template's image lives under."""
    return rec.image if rec.source == SOURCE_OCI else rec.spec.content_hash()
