"""Erebus: template specs, rootfs builds, OCI import and the content-addressed image cache."""

from tartarus.images.cache import ImageCache, ImageInfo
from tartarus.images.specs import DEFAULT_TEMPLATE, builtin_specs, load_spec_file

__all__ = ["DEFAULT_TEMPLATE", "ImageCache", "ImageInfo", "builtin_specs", "load_spec_file"]
