"""The shared adapter for OCI command-line runtimes (crun, runc): create/start/state/kill/delete.

Both runtimes speak the same CLI. Subclasses only say how to invoke the binary and how to
explain a failed probe. Each runtime keeps its state under our own `--root`, so `list`
shows only Tartarus containers and a leak check can look there.

Pause is the cgroup freezer (`pause`/`resume`, about 10 ms). A frozen process cannot die, so
`delete` thaws a frozen container first: crun's `delete --force` would otherwise report
success and leave the frozen init behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from tartarus.errors import CapabilityError, RuntimeUnavailableError
from tartarus.models import ExecResult, Resources
from tartarus.runtimes import cgroups, hostns, reaper, spawn
from tartarus.runtimes.base import (
    BindMount,
    Capabilities,
    ContainerConfig,
    ContainerStatus,
    ProbeResult,
    Runtime,
)
from tartarus.runtimes.bundle import CAPABILITY_SETS, CGROUP_PARENT, cgroup_limits, write_bundle
from tartarus.runtimes.cgroups import CGROUP_ROOT


class OCIRuntime(Runtime):
    binary: str
    package: str
    capabilities = Capabilities(pause=True, checkpoint=False, userns=True)

    # -- invocation -------------------------------------------------------------------------

    def command_prefix(self) -> list[str]:
        """argv before the runtime's subcommand; crun wraps it in a namespace when needed."""
        return [self.binary, "--root", str(self.root)]

    def create_prefix(self) -> list[str]:
        return self.command_prefix()

    async def _run(
        self, *args: str, prefix: list[str] | None = None, check: bool = True
    ) -> tuple[int, str, str]:
        argv = [*(prefix or self.command_prefix()), *args]
        try:
            rc, out, err = await spawn.run(argv)
        except FileNotFoundError as exc:
            raise RuntimeUnavailableError(
                f"{self.name}: {argv[0]} not found; install the {self.package!r} package"
            ) from exc
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if check and rc != 0:
            raise RuntimeUnavailableError(f"{self.name} {args[0]} failed: {_last_line(stderr)}")
        return rc, stdout, stderr

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, config: ContainerConfig, bundle: Path, log: Path) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        write_bundle(config, bundle)
        pid_file = bundle / "init.pid"
        argv = [*self.create_prefix(), *self.log_args(log), "run", "--detach"]
        argv += ["--bundle", str(bundle), "--pid-file", str(pid_file)]
        if config.pass_fds:
            argv += ["--preserve-fds", str(len(config.pass_fds))]
        argv.append(config.id)
        # The container inherits the runtime's stdio, so no pipe of ours may be among them
        # (waiting for its EOF would wait for the sandbox's end): both go to the log file.
        offset = log.stat().st_size if log.exists() else 0
        try:
            rc, _, _ = await spawn.run(argv, fds=config.pass_fds, output=self.stdio(log))
        except FileNotFoundError as exc:
            raise RuntimeUnavailableError(
                f"{self.name}: {argv[0]} not found; install the {self.package!r} package"
            ) from exc
        if rc != 0:
            with open(log, "rb") as reader:
                reader.seek(offset)
                err = reader.read(65536).decode(errors="replace")
            raise RuntimeUnavailableError(
                f"{self.name} could not start the sandbox: {self.last_error(err)}"
            )
        return int(pid_file.read_text().strip())

    def last_error(self, output: str) -> str:
        """The line of the runtime's output that says what went wrong."""
        return _last_line(output)

    def log_args(self, log: Path) -> list[str]:
        """Global options that send the runtime's own messages to `log` (see `stdio`)."""
        return []

    def stdio(self, log: Path) -> Path:
        """Where the container's stdout and stderr go: the log, where the runtime's own
        errors land too (runc says otherwise: CRIU cannot checkpoint a host file there)."""
        return log

    async def status(self, container_id: str) -> ContainerStatus | None:
        rc, out, _ = await self._run("state", container_id, check=False)
        if rc != 0:
            return None
        try:
            return ContainerStatus(json.loads(out)["status"])
        except (ValueError, KeyError):
            return None

    async def kill(self, container_id: str, signal: int = 9) -> None:
        await self._run("kill", container_id, str(signal), check=False)

    resizable = True

    async def resize(self, container_id: str, resources: Resources, bundle: Path) -> None:
        path = bundle / "resources.json"
        path.write_text(json.dumps(cgroup_limits(resources)))
        await self._run("update", "--resources", str(path), container_id)

    async def delete(self, container_id: str) -> None:
        if _frozen(container_id):
            await self._run("resume", container_id, check=False)
        rc, _, err = await self._run("delete", "--force", container_id, check=False)
        if rc != 0 and await self.status(container_id) is not None:
            raise RuntimeUnavailableError(f"{self.name} delete failed: {_last_line(err)}")
        hostns.remove_shadow_cgroup(f"{CGROUP_PARENT}/{container_id}")
        # a runtime cannot remove a cgroup whose processes are still dying (gVisor's sentry
        # takes a moment): wait for them, then remove what is left
        await cgroups.drain(CGROUP_PARENT, container_id)
        cgroups.remove(CGROUP_PARENT, container_id)

    async def list_ids(self) -> list[str]:
        if not self.root.exists():
            return []
        _, out, _ = await self._run("list", "--quiet", check=False)
        return [line.strip() for line in out.splitlines() if line.strip()]

    async def exec(
        self,
        container_id: str,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        uid: int,
        gid: int,
        stdin: bytes | None = None,
        on_stdout: Callable[[bytes], Awaitable[None]],
        on_stderr: Callable[[bytes], Awaitable[None]],
        timeout: float | None = None,
    ) -> ExecResult:
        """Run a process in the container through the runtime itself (images without python3
        cannot run our guest agent). Same isolation as the init: user, no caps, no_new_privs."""
        work = Path(tempfile.mkdtemp(prefix=f"exec-{container_id}-", dir=self.root))
        try:
            process = {
                "terminal": False,
                "user": {"uid": uid, "gid": gid},
                "args": argv,
                "env": [f"{k}={v}" for k, v in env.items()],
                "cwd": cwd,
                "capabilities": {k: [] for k in CAPABILITY_SETS},
                "noNewPrivileges": True,
            }
            (work / "process.json").write_text(json.dumps(process))
            pid_file = work / "pid"
            proc = await reaper.spawn(
                *self.command_prefix(),
                "exec",
                "--process",
                str(work / "process.json"),
                "--pid-file",
                str(pid_file),
                container_id,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            errors = bytearray()

            async def pump(
                stream: asyncio.StreamReader,
                sink: Callable[[bytes], Awaitable[None]],
                keep: bytearray | None,
            ) -> None:
                while chunk := await stream.read(65536):
                    if keep is not None and len(keep) < 4096:
                        keep.extend(chunk)
                    await sink(chunk)

            async def feed() -> None:
                assert proc.stdin is not None
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    proc.stdin.write(stdin or b"")
                    await proc.stdin.drain()
                proc.stdin.close()

            assert proc.stdout is not None and proc.stderr is not None
            tasks = [pump(proc.stdout, on_stdout, None), pump(proc.stderr, on_stderr, errors)]
            if stdin is not None:
                tasks.append(feed())
            timed_out = False
            try:
                await asyncio.wait_for(asyncio.gather(*tasks, proc.wait()), timeout)
            except TimeoutError:
                timed_out = True
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                await proc.wait()
            rc = proc.returncode if proc.returncode is not None else -1
        finally:
            shutil.rmtree(work, ignore_errors=True)
            reaper.reap_sandbox_zombies()  # a failed exec leaves its child to us
        if timed_out:
            return ExecResult(exit_code=137, signal=9, timed_out=True)
        if rc in (1, 255) and b"executable file" in errors and b"not found" in errors:
            rc = 127  # the runtime could not find the command: the shell convention
        return ExecResult(exit_code=rc, signal=rc - 128 if rc > 128 else None)

    async def pause(self, container_id: str) -> None:
        await self._run("pause", container_id)

    async def resume(self, container_id: str) -> None:
        await self._run("resume", container_id)

    # -- probing ----------------------------------------------------------------------------

    async def version(self) -> str:
        _, out, _ = await self._run("--version", prefix=[self.binary])
        return out.splitlines()[0] if out else ""

    async def probe(self) -> ProbeResult:
        """Really start a tiny busybox sandbox with the full isolation config."""
        if shutil.which(self.binary) is None:
            return ProbeResult(
                False,
                reason=f"{self.binary} is not installed",
                hint=f"apt-get install {self.package}",
            )
        version = await self.version()
        busybox = shutil.which("busybox")
        if busybox is None:
            return ProbeResult(
                False,
                version,
                "busybox (needed for the probe) is missing",
                "apt-get install busybox-static",
            )
        probe_dir = self.root.parent / f"probe-{self.name}"
        rootfs = probe_dir / "rootfs"
        cid = f"probe-{self.name}-{os.getpid()}"
        pids: list[int] = []
        try:
            _make_probe_rootfs(rootfs, Path(busybox))
            config = ContainerConfig(
                id=cid,
                rootfs=rootfs,
                args=["/bin/busybox", "sleep", "30"],
                env={},
                cwd="/",
                resources=Resources(memory_mb=64, pids=32, cpu=0.5, disk_mb=1),
                binds=[BindMount(rootfs / "bin", "/mnt")],
            )
            log = probe_dir / "log"
            pids.append(await self.start(config, probe_dir / "bundle", log))
            paused, why = await self._probe_pause(cid) if self.capabilities.pause else (False, "")
            saved, saved_why = await self._probe_checkpoint(config, probe_dir, pids)
            return ProbeResult(
                True,
                version,
                pause=paused,
                pause_error=why,
                checkpoint=saved,
                checkpoint_error=saved_why,
            )
        except RuntimeUnavailableError as exc:
            return ProbeResult(False, version, str(exc), self.failure_hint(str(exc)))
        finally:
            await self.delete(cid)
            for pid in pids:
                await reaper.reap(pid, timeout=2.0)  # it may have been re-parented to us
            shutil.rmtree(probe_dir, ignore_errors=True)

    async def _probe_checkpoint(
        self, config: ContainerConfig, probe_dir: Path, pids: list[int]
    ) -> tuple[bool, str]:
        """Checkpoint the probe sandbox and restore it: (worked, why not)."""
        if (why := await self.checkpoint_unavailable()) is not None:
            return False, why
        image = probe_dir / "checkpoint"
        try:
            await self.checkpoint(config.id, image)
            pids.append(await self.restore(config, probe_dir / "bundle", probe_dir / "log", image))
            if (status := await self.status(config.id)) != ContainerStatus.RUNNING:
                return False, f"{self.name} restore left the sandbox {status}"
        except (RuntimeUnavailableError, CapabilityError) as exc:
            return False, str(exc)
        return True, ""

    async def checkpoint_unavailable(self) -> str | None:
        """Why this runtime cannot checkpoint on this host before trying (None: try it)."""
        if not self.capabilities.checkpoint:
            return "not supported by this runtime"
        return None

    async def _probe_pause(self, cid: str) -> tuple[bool, str]:
        """Pause and resume the probe sandbox: (worked, why not)."""
        try:
            await self.pause(cid)
            if (status := await self.status(cid)) != ContainerStatus.PAUSED:
                return False, f"{self.name} pause left the sandbox {status}"
            await self.resume(cid)
            if (status := await self.status(cid)) != ContainerStatus.RUNNING:
                return False, f"{self.name} resume left the sandbox {status}"
        except RuntimeUnavailableError as exc:
            return False, str(exc)
        return True, ""

    def failure_hint(self, error: str) -> str:
        return ""


def _frozen(container_id: str) -> bool:
    """Whether the container's freezer cgroup (v1, or v2's cgroup.freeze) is frozen."""
    for path, frozen in (
        (CGROUP_ROOT / "freezer" / CGROUP_PARENT / container_id / "freezer.state", "FROZEN"),
        (CGROUP_ROOT / CGROUP_PARENT / container_id / "cgroup.freeze", "1"),
    ):
        try:
            state = path.read_text().strip()
        except OSError:
            continue
        return state in (frozen, "FREEZING")
    return False


def _make_probe_rootfs(rootfs: Path, busybox: Path) -> None:
    for d in ("bin", "proc", "sys", "dev", "tmp", "mnt"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    rootfs.parent.chmod(0o755)
    target = rootfs / "bin" / "busybox"
    if not target.exists():
        shutil.copy2(busybox, target)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no error output)"
