"""The floors: what each benchmark figure is compared with, measured in the same run.

A floor is the same work done with no orchestration at all: raw `crun run` / `crun exec` on
the very rootfs a sandbox gets (the built template image, read-only) with the isolation config
the engine writes (`runtimes/bundle.py`: user, pid, net ... namespaces, seccomp, cgroup
limits), or plain `python3` on the host. Tartarus' figures are ratios to these, so a loaded
or slow machine moves both sides alike.

crun must run from a private mount namespace on cgroup-v1-hybrid hosts: the caller enters it
once (`hostns.enter()`) on the thread that calls these functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tartarus.models import Resources
from tartarus.runtimes import cgroups, hostns, reaper
from tartarus.runtimes.base import ContainerConfig
from tartarus.runtimes.bundle import CAPABILITY_SETS, CGROUP_PARENT, write_bundle

HOST_PYTHON = "/usr/bin/python3"
PATH_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
NOBODY = "65534:65534"
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


class FloorError(RuntimeError):
    """A floor could not be measured (the raw runtime or host command failed)."""


def _empty_cgroup(cid: str, timeout: float = 2.0) -> None:
    """SIGKILL what is still in a container's cgroups and wait for it to leave.

    A `crun run` killed while it moves its child into the cgroups (Ctrl-C) leaves that child
    in some hierarchies; an rmdir of a cgroup with a member fails. Nothing is there after a
    normal run, so this costs one directory scan."""
    deadline = time.monotonic() + timeout
    while (left := cgroups.pids(CGROUP_PARENT, cid)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)  # a zombie is out of its cgroups already; close() reaps it


class RawCrun:
    """Containers started by `crun` directly, in `work` (bundles and crun's --root)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.root = work / "crun"
        self._ids = iter(range(10**9))
        self._live: dict[str, int] = {}  # detached container id -> init pid
        self._started: set[str] = set()  # not cleaned up yet

    def _new_id(self, kind: str) -> str:
        cid = f"bench-{kind}-{os.getpid()}-{next(self._ids)}"
        self._started.add(cid)
        return cid

    def close(self) -> None:
        """Remove every container still here: an interrupted run (Ctrl-C in the middle of a
        `crun run`) leaves some behind, with their cgroups and exited inits."""
        if self.root.exists():
            out = subprocess.run(self._argv("list", "-q"), capture_output=True, text=True)
            for cid in out.stdout.split():
                subprocess.run(self._argv("delete", "--force", cid), capture_output=True)
        for cid in list(self._started):
            self._cleanup(cid)
        mine = f"-{os.getpid()}-"
        for path in cgroups.leftovers(CGROUP_PARENT):
            if path.name.startswith("bench-") and mine in path.name:
                self._cleanup(path.name)
        reaper.reap_sandbox_zombies()

    def _bundle(self, cid: str, rootfs: Path, args: list[str]) -> Path:
        bundle = self.work / cid
        config = ContainerConfig(
            id=cid, rootfs=rootfs, args=args, env=dict(PATH_ENV), cwd="/", resources=Resources()
        )
        spec_path = write_bundle(config, bundle)
        spec = json.loads(spec_path.read_text())
        spec["root"]["readonly"] = True  # the shared image must stay untouched
        spec_path.write_text(json.dumps(spec))
        return bundle

    def _cleanup(self, cid: str) -> None:
        _empty_cgroup(cid)
        shutil.rmtree(self.work / cid, ignore_errors=True)
        hostns.remove_shadow_cgroup(f"{CGROUP_PARENT}/{cid}")
        cgroups.remove(CGROUP_PARENT, cid)
        self._started.discard(cid)

    def _argv(self, *args: str) -> list[str]:
        return ["crun", "--root", str(self.root), *args]

    def run(self, rootfs: Path, args: list[str]) -> float:
        """Seconds for one `crun run` of `args` to completion (bundle written inside)."""
        cid = self._new_id("run")
        t0 = time.perf_counter()
        try:
            bundle = self._bundle(cid, rootfs, args)
            proc = subprocess.run(
                self._argv("run", "--bundle", str(bundle), cid),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            elapsed = time.perf_counter() - t0
        finally:
            self._cleanup(cid)
        if proc.returncode != 0:
            raise FloorError(f"crun run {args} failed: {_last(proc.stderr)}")
        return elapsed

    async def run_async(self, rootfs: Path, args: list[str]) -> None:
        """One `crun run` to completion, for concurrent loops (throughput). In a thread: a
        cancelled loop (Ctrl-C) lets the run end and clean up after itself, where killing
        crun halfway through would leave its container's cgroups, and asyncio's own child
        handling can lose a process's exit when interrupted."""
        await asyncio.to_thread(self.run, rootfs, args)

    @contextlib.contextmanager
    def detached(self, rootfs: Path) -> Iterator[str]:
        """A running container (init: `sleep infinity`) for `exec`; removed on exit.

        The caller must be a child subreaper: the detached init is re-parented to it."""
        cid = self._new_id("idle")
        pid_file, log = self.work / f"{cid}.pid", self.work / f"{cid}.log"
        try:
            bundle = self._bundle(cid, rootfs, ["/bin/sleep", "infinity"])
            # the container inherits crun's stdio: a pipe would never see EOF, so a file
            with log.open("wb") as out:
                argv = self._argv("run", "--detach", "--bundle", str(bundle))
                proc = subprocess.run(
                    [*argv, "--pid-file", str(pid_file), cid],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    check=False,
                )
            if proc.returncode != 0:
                raise FloorError(f"crun run --detach failed: {_last(log.read_bytes())}")
            self._live[cid] = int(pid_file.read_text().strip())
            yield cid
        finally:
            self._stop(cid)
            pid_file.unlink(missing_ok=True)
            log.unlink(missing_ok=True)

    def _stop(self, cid: str) -> None:
        pid = self._live.pop(cid, None)
        subprocess.run(self._argv("kill", cid, "KILL"), capture_output=True, check=False)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)  # ours as subreaper; reaped before delete can finish
        subprocess.run(self._argv("delete", "--force", cid), capture_output=True, check=False)
        self._cleanup(cid)

    def exec(self, cid: str, args: list[str]) -> float:
        """Seconds for one `crun exec` of `args` as the sandbox user, without capabilities."""
        process = {
            "terminal": False,
            "user": {"uid": 1000, "gid": 1000},
            "args": args,
            "env": [f"{k}={v}" for k, v in PATH_ENV.items()],
            "cwd": "/",
            "capabilities": {k: [] for k in CAPABILITY_SETS},
            "noNewPrivileges": True,
        }
        spec = self.work / f"{cid}.process.json"
        spec.write_text(json.dumps(process))
        t0 = time.perf_counter()
        proc = subprocess.run(
            self._argv("exec", "--process", str(spec), cid),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise FloorError(f"crun exec {args} failed: {_last(proc.stderr)}")
        return elapsed


def host_command(argv: list[str], *, chroot: Path | None = None) -> float:
    """Seconds for one host command (optionally chrooted into an image as nobody, with no
    bytecode written: the image is shared and must stay untouched)."""
    env = dict(PATH_ENV)
    if chroot is not None:
        argv = [CHROOT, f"--userspec={NOBODY}", str(chroot), *argv]
        env |= {"PYTHONDONTWRITEBYTECODE": "1", "HOME": "/"}
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise FloorError(f"{' '.join(argv)} failed: {_last(proc.stderr)}")
    return elapsed


def host_output(argv: list[str], *, chroot: Path | None = None) -> str:
    """stdout of a chrooted command (as nobody), e.g. the image's pandas version."""
    if chroot is not None:
        argv = [CHROOT, f"--userspec={NOBODY}", str(chroot), *argv]
    env = PATH_ENV | {"PYTHONDONTWRITEBYTECODE": "1", "HOME": "/"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise FloorError(f"{' '.join(argv)} failed: {_last(proc.stderr.encode())}")
    return proc.stdout.strip()


def _last(stderr: bytes) -> str:
    lines = [x.strip() for x in stderr.decode(errors="replace").splitlines() if x.strip()]
    return lines[-1] if lines else "(no error output)"
