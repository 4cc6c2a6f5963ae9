"""Importing OCI images (a layout dir, an OCI archive or a `docker save` tar) into the image cache.

There are no registries reachable here, so images arrive as files. skopeo turns any supported
input into a local OCI layout and umoci unpacks it. The image hash is derived from the layers'
uncompressed digests (the config's `rootfs.diff_ids`), i.e. from the filesystem content itself:
re-importing the same image is a cache hit, even when it comes back in another container format.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tartarus.errors import InvalidRequestError, NotFoundError
from tartarus.images.builder import ImageBuildError, ProgressFn, prepare_mountpoints
from tartarus.images.cache import ImageCache, ImageInfo, find_python, remove_tree, tree_size
from tartarus.models.template import TemplateSpec

IMPORT_FORMAT = 1  # bump when the import changes what it produces for the same image
_REF_NAME = "org.opencontainers.image.ref.name"
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_STAGE_TAG = "import"


def _noop(_step: str, _fraction: float | None) -> None:
    return None


def split_source(source: Path | str) -> tuple[Path, str | None]:
    """`path` or `path:tag` -> (path, tag). The whole string wins if it exists as a path."""
    text = str(source)
    if os.path.lexists(text):
        return Path(text), None
    if ":" in text:
        base, tag = text.rsplit(":", 1)
        if base and tag and "/" not in tag and os.path.lexists(base):
            return Path(base), tag
    raise NotFoundError(f"{text}: no such file or directory")


def detect_format(path: Path) -> str:
    """'oci-layout' (a directory), 'oci-archive' or 'docker-archive'; InvalidRequestError else."""
    if path.is_dir():
        if not (path / "index.json").is_file():
            raise InvalidRequestError(f"{path}: not an OCI image layout (no index.json)")
        return "oci-layout"
    if not path.is_file():
        raise InvalidRequestError(f"{path}: not a file or directory")
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name == "oci-layout":
                    return "oci-archive"
                if name == "manifest.json":
                    return "docker-archive"
    except (tarfile.TarError, OSError, EOFError) as err:
        raise InvalidRequestError(
            f"{path}: unrecognised image format (not a layout dir or a tar: {err})"
        ) from None
    raise InvalidRequestError(
        f"{path}: unrecognised image format (a tar without oci-layout or manifest.json)"
    )


def _run_tool(step: str, argv: list[str]) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
    except OSError as err:
        raise ImageBuildError(
            f"{step} failed: cannot run {argv[0]}: {err.strerror}", step=step
        ) from None
    if result.returncode != 0:
        lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "no output"
        raise ImageBuildError(
            f"{step} failed (exit {result.returncode}): {last}", step=step, output=lines[-25:]
        )


def _read_json(layout: Path, digest: str) -> Any:
    algo, _, hexdigest = digest.partition(":")
    blob = layout / "blobs" / algo / hexdigest
    try:
        return json.loads(blob.read_bytes())
    except (OSError, ValueError) as err:
        raise InvalidRequestError(f"{layout}: cannot read blob {digest}: {err}") from None


def _pick_manifest(layout: Path, tag: str | None) -> dict[str, Any]:
    try:
        index = json.loads((layout / "index.json").read_bytes())
        manifests: list[dict[str, Any]] = list(index.get("manifests") or [])
    except (OSError, ValueError, AttributeError) as err:
        raise InvalidRequestError(f"{layout}: unreadable index.json: {err}") from None
    if not manifests:
        raise InvalidRequestError(f"{layout}: the OCI layout holds no image")
    if tag is None:
        return manifests[0]
    for desc in manifests:
        if (desc.get("annotations") or {}).get(_REF_NAME) == tag:
            return desc
    tags = sorted(str((d.get("annotations") or {}).get(_REF_NAME)) for d in manifests)
    raise NotFoundError(f"{layout}: no image tagged {tag!r}; tags: {', '.join(tags)}")


@contextlib.contextmanager
def _staging(cache: ImageCache) -> Iterator[Path]:
    cache.image_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".import-", dir=cache.image_dir))
    try:
        yield stage
    finally:
        remove_tree(stage)


def _image_hash(config: dict[str, Any]) -> str:
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    blob = json.dumps({"format": IMPORT_FORMAT, "diff_ids": diff_ids}, sort_keys=True).encode()
    return "oci-" + hashlib.sha256(blob).hexdigest()[:28]


def _spec_for(name: str, source: Path | str, config: dict[str, Any]) -> TemplateSpec:
    cfg = config.get("config") or {}
    env: dict[str, str] = {}
    for item in cfg.get("Env") or []:
        key, sep, value = str(item).partition("=")
        if sep and key:
            env[key] = value
    workdir = str(cfg.get("WorkingDir") or "/")
    if not workdir.startswith("/"):
        workdir = "/"
    try:
        return TemplateSpec(
            name=name, description=f"imported from {source}", env=env, workdir=workdir
        )
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidRequestError(f"template {field} {name!r}: {first['msg']}") from None


def import_image(
    source: Path | str,
    name: str,
    cache: ImageCache,
    progress: ProgressFn | None = None,
) -> ImageInfo:
    """Import an OCI layout dir (optionally `DIR:tag`), OCI archive or docker-archive tar."""
    report = progress or _noop
    _spec_for(name, source, {})  # validate the name before doing any work
    path, tag = split_source(source)
    fmt = detect_format(path)
    report(f"reading {fmt}", 0.05)
    with _staging(cache) as stage:
        if fmt == "oci-layout":
            layout = path
            desc = _pick_manifest(layout, tag)
            ref = (desc.get("annotations") or {}).get(_REF_NAME)
            if desc.get("mediaType") in _INDEX_TYPES or ref is None:
                # umoci needs a tag and a single-platform manifest; skopeo picks our platform
                src = f"oci:{layout}:{ref}" if ref else f"oci:{layout}"
                report("copying with skopeo", 0.15)
                _run_tool("skopeo copy", _skopeo(src, stage))
                layout, tag = stage / "layout", _STAGE_TAG
            else:
                tag = str(ref)
        else:
            src = f"{fmt}:{path}" + (f":{tag}" if tag else "")
            report("converting with skopeo", 0.15)
            _run_tool("skopeo copy", _skopeo(src, stage))
            layout, tag = stage / "layout", _STAGE_TAG
        desc = _pick_manifest(layout, tag)
        manifest = _read_json(layout, str(desc.get("digest", "")))
        config = _read_json(layout, str((manifest.get("config") or {}).get("digest", "")))
        spec = _spec_for(name, source, config)
        h = _image_hash(config)
        if cache.exists(h):
            report("already imported", 1.0)
            return cache.info(h)
        with cache.lock(h):
            if cache.exists(h):
                return cache.info(h)
            work = cache.new_workdir(h)
            try:
                report("unpacking with umoci", 0.4)
                bundle = work / "bundle"
                _run_tool(
                    "umoci unpack", ["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)]
                )
                root = work / "rootfs"
                os.replace(bundle / "rootfs", root)
                shutil.rmtree(bundle)
                report("finalize", 0.9)
                prepare_mountpoints(root)
                info = ImageInfo(
                    hash=h,
                    template=name,
                    source="oci",
                    created_at=datetime.now(UTC),
                    size_bytes=tree_size(root),
                    python=find_python(root),
                    spec=spec,
                )
                result = cache.commit(work, info)
            except BaseException:
                cache.discard(work)
                raise
    report("imported", 1.0)
    return result


def _skopeo(src: str, stage: Path) -> list[str]:
    # local files only, so there are no signatures to check
    return [
        "skopeo",
        "--insecure-policy",
        "copy",
        "--quiet",
        src,
        f"oci:{stage / 'layout'}:{_STAGE_TAG}",
    ]
