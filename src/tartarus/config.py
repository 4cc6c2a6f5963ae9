"""Engine settings, read from the environment (`TARTARUS_*`) with defaults for one host.

Precedence: explicit arguments > environment variables > defaults. The image cache is separate
from the state directory so several state dirs (tests, several servers) share built rootfs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tartarus.errors import InvalidRequestError

# What a stopping server does with its sandboxes: leave them running for the next server to
# re-adopt, or terminate them gracefully (SIGTERM, grace, kill).
SHUTDOWN_POLICIES = ("leave", "terminate", "hibernate")  # node/shutdown.py
MAX_GRACE_S = 3600.0
MAX_IDLE_HIBERNATE_S = 7 * 24 * 3600.0


def _env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name) or default)


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise InvalidRequestError(f"{name}={value!r} is not a number of seconds") from None


def _env_bytes(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise InvalidRequestError(f"{name}={value!r} is not a positive number of bytes")
    return number


def _env_optional_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


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
    pools_file: Path | None = field(  # warm pools a server sets up at start (YAML list)
        default_factory=lambda: _env_optional_path("TARTARUS_POOLS_FILE")
    )
    policies_file: Path | None = field(  # Themis policies a server applies at start (YAML)
        default_factory=lambda: _env_optional_path("TARTARUS_POLICIES_FILE")
    )
    termination_grace_s: float = field(  # SIGTERM-to-kill grace when a template sets none
        default_factory=lambda: _env_seconds("TARTARUS_TERMINATION_GRACE_S", 10.0)
    )
    shutdown: str = field(default_factory=lambda: os.environ.get("TARTARUS_SHUTDOWN") or "leave")
    # Hypnos: a sandbox idle this long (no exec, no agent call in flight) is hibernated on a
    # runtime that can checkpoint; 0 turns it off
    idle_hibernate_s: float = field(
        default_factory=lambda: _env_seconds("TARTARUS_IDLE_HIBERNATE_S", 600.0)
    )
    # Erinyes: output a sandbox may produce (main command and execs together) before the
    # rest is dropped behind a truncation marker, so a flood cannot fill disk or memory
    max_output_bytes: int = field(
        default_factory=lambda: _env_bytes("TARTARUS_MAX_OUTPUT_BYTES", 64 * 1024 * 1024)
    )

    # Styx: where sandboxes' DNS resolver asks (ip[:port]; default the host's first
    # nameserver), and the CIDRs `open` sandboxes may not reach (default RFC 1918)
    dns_upstream: str | None = field(
        default_factory=lambda: os.environ.get("TARTARUS_DNS_UPSTREAM") or None
    )
    net_blocked: str = field(
        default_factory=lambda: os.environ.get(
            "TARTARUS_NET_BLOCKED", "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"
        )
    )

    # Nyx retention: snapshots older than this are deleted (0: kept forever), and a tenant
    # keeps at most this many, the oldest going first (0: no limit)
    snapshot_max_age_s: float = field(
        default_factory=lambda: _env_seconds("TARTARUS_SNAPSHOT_MAX_AGE_S", 0.0)
    )
    snapshot_max_count: int = field(
        default_factory=lambda: int(_env_seconds("TARTARUS_SNAPSHOT_MAX_COUNT", 0.0))
    )

    def __post_init__(self) -> None:
        if self.snapshot_max_age_s < 0 or self.snapshot_max_count < 0:
            raise InvalidRequestError(
                "snapshot retention must be >= 0 (0: off)"
                " (TARTARUS_SNAPSHOT_MAX_AGE_S, TARTARUS_SNAPSHOT_MAX_COUNT)"
            )
        if not 0 <= self.termination_grace_s <= MAX_GRACE_S:
            raise InvalidRequestError(
                f"termination grace must be 0 to {MAX_GRACE_S:g} seconds,"
                f" not {self.termination_grace_s:g} (TARTARUS_TERMINATION_GRACE_S)"
            )
        if not 0 <= self.idle_hibernate_s <= MAX_IDLE_HIBERNATE_S:
            raise InvalidRequestError(
                f"idle hibernation must be 0 (off) to {MAX_IDLE_HIBERNATE_S:g} seconds,"
                f" not {self.idle_hibernate_s:g} (TARTARUS_IDLE_HIBERNATE_S)"
            )
        if self.shutdown not in SHUTDOWN_POLICIES:
            raise InvalidRequestError(
                f"shutdown policy must be one of {', '.join(SHUTDOWN_POLICIES)},"
                f" not {self.shutdown!r} (TARTARUS_SHUTDOWN)"
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

    @property
    def snapshots_dir(self) -> Path:
        return self.state_dir / "snapshots"
