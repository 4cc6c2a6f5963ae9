"""Engine settings, read from the environment (`TARTARUS_*`) with defaults for one host.

Precedence: explicit arguments > environment variables > defaults. The image cache is separate
from the state directory so several state dirs (tests, several servers) share built rootfs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name) or default)


@dataclass(frozen=True)
class Settings:
    state_dir: Path = field(
        default_factory=lambda: _env_path("TARTARUS_STATE_DIR", "/var/lib/tartarus")
    )
    image_dir: Path = field(
        default_factory=lambda: _env_path("TARTARUS_IMAGE_DIR", "/var/lib/tartarus/images")
    )
    mirror: str = field(
        default_factory=lambda: os.environ.get("TARTARUS_MIRROR", "http://deb.debian.org/debian")
    )
    default_runtime: str | None = field(
        default_factory=lambda: os.environ.get("TARTARUS_RUNTIME") or None
    )

    @property
    def db_path(self) -> Path:
        return self.state_dir / "tartarus.db"

    @property
    def sandboxes_dir(self) -> Path:
        return self.state_dir / "sandboxes"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"
