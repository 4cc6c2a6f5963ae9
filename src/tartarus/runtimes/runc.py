"""runc: the reference OCI runtime; works on hybrid cgroup hosts as is, about 2x crun's start.

It also checkpoints and restores (hibernation) through CRIU, which Debian 12 ships too old
for this kernel (3.17 fails `criu check`): scripts/setup.sh builds 4.1.1 into
/opt/tartarus/criu (`TARTARUS_CRIU` names another), and `runc --criu PATH` uses it. Without a
working CRIU the probe says so and checkpoint stays off. What CRIU needs from a container:

* stdio it can reopen: a host file (our init log) fails with "Can't lookup mount", so the
  container's stdio is /dev/null and runc's own errors go to the log through `--log`;
* no socket of another network namespace: the agent's listening socket (fd 3) is the
  host's, so the engine parks the agent on a socket of its own first (node/parking.py);
* runc leaves the container's cgroup2 twin behind after a restore; `delete` removes it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tartarus.errors import RuntimeUnavailableError
from tartarus.runtimes import spawn
from tartarus.runtimes.base import Capabilities, ContainerConfig
from tartarus.runtimes.oci_cli import OCIRuntime, _last_line

DEFAULT_CRIU = "/opt/tartarus/criu/bin/criu"


def criu_path() -> Path:
    return Path(os.environ.get("TARTARUS_CRIU") or DEFAULT_CRIU)


class RuncRuntime(OCIRuntime):
    name = "runc"
    binary = "runc"
    package = "runc"
    capabilities = Capabilities(pause=True, checkpoint=True, userns=True)
    needs_agent_parking = True

    def log_args(self, log: Path) -> list[str]:
        return ["--log", str(log)]

    def stdio(self, log: Path) -> Path:
        return Path(os.devnull)

    def last_error(self, output: str) -> str:
        return _message(_last_line(output))

    def probe_binaries(self) -> list[str]:
        return [self.binary, str(criu_path())]

    async def checkpoint_unavailable(self) -> str | None:
        criu = criu_path()
        if not os.access(criu, os.X_OK):
            return f"CRIU >= 4.1 is not installed at {criu} (scripts/setup.sh builds it)"
        rc, out, err = await self._run("check", prefix=[str(criu)], check=False)
        if rc != 0:
            return f"`criu check` fails on this host: {_last_line(err or out)}"
        return None

    # CRIU runs in the container's user namespace, which does not own a netns of ours (it is
    # the host's): "Can't setns 11/net: Operation not permitted". A netns owned by that user
    # namespace dumps, but the restore makes a new user namespace and fails the same way.
    checkpoints_with_network = False

    async def checkpoint(self, container_id: str, image_dir: Path) -> None:
        image_dir.mkdir(parents=True, exist_ok=True)
        work = image_dir / "criu-dump"
        rc, _, err = await self._run(
            "--criu",
            str(criu_path()),
            "checkpoint",
            "--image-path",
            str(image_dir),
            "--work-path",
            str(work),
            container_id,
            check=False,
        )
        if rc != 0:
            raise RuntimeUnavailableError(
                f"runc checkpoint failed: {_criu_error(work / 'dump.log') or _last_line(err)}"
            )
        await self.delete(container_id)

    async def restore(
        self, config: ContainerConfig, bundle: Path, log: Path, image_dir: Path
    ) -> int:
        work = image_dir / "criu-restore"
        pid_file = bundle / "init.pid"
        pid_file.unlink(missing_ok=True)
        argv = [*self.command_prefix(), *self.log_args(log), "--criu", str(criu_path())]
        argv += ["restore", "--detach", "--image-path", str(image_dir), "--work-path", str(work)]
        argv += ["--bundle", str(bundle), "--pid-file", str(pid_file), config.id]
        rc, _, _ = await spawn.run(argv, output=self.stdio(log))
        if rc != 0:
            why = _criu_error(work / "restore.log") or _message(_last_line(_tail(log)))
            await self.delete(config.id)  # a half-restored container
            raise RuntimeUnavailableError(f"runc restore failed: {why}")
        return int(pid_file.read_text().strip())


def _message(line: str) -> str:
    """runc logs `time=... level=error msg="..."`: the message is what a user needs."""
    match = re.search(r'msg="((?:[^"\\]|\\.)*)"', line)
    return match.group(1).replace('\\"', '"') if match else line


def _tail(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 4096, 0))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _criu_error(log: Path) -> str | None:
    """The first error CRIU logged (runc only says "criu failed")."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line for line in lines if "Error (" in line and "RLIMIT_NOFILE" not in line]
    return errors[0].split("): ", 1)[-1].strip() if errors else None
