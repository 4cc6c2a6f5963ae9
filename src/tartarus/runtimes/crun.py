"""crun: the fastest OCI runtime here (about 35 ms to a running python3).

On cgroup-v1-hybrid hosts crun refuses to create containers unless it cannot see the
cgroup2 mount; see `hostns`. When the engine thread is already in its private namespace
(the normal case) crun runs directly; otherwise each create pays for an `unshare` wrapper.
It cannot hibernate sandboxes here: Debian's crun is built without CRIU (runc can).
"""

from __future__ import annotations

from tartarus.runtimes import hostns
from tartarus.runtimes.oci_cli import OCIRuntime

_WRAP = 'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"'


class CrunRuntime(OCIRuntime):
    name = "crun"
    binary = "crun"
    package = "crun"

    def create_prefix(self) -> list[str]:
        if hostns.entered() or not hostns.is_hybrid_cgroup_host():
            return self.command_prefix()
        return [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            _WRAP,
            "sh",
            *self.command_prefix(),
        ]

    async def checkpoint_unavailable(self) -> str | None:
        # crun checkpoints through libcriu only when built with it (`+CRIU` in --version);
        # Debian 12's 1.8.1 is not, and we do not build crun
        if "+CRIU" not in await self.version_features():
            return "this crun is built without CRIU support (no +CRIU in `crun --version`)"
        return "checkpoint through crun is not wired up; runc with CRIU is"

    async def version_features(self) -> str:
        _, out, _ = await self._run("--version", prefix=[self.binary], check=False)
        return out

    def failure_hint(self, error: str) -> str:
        if "hybrid" in error:
            return (
                "cgroup v1 hybrid host: run crun in a private mount namespace"
                " without /sys/fs/cgroup/unified"
            )
        return ""
