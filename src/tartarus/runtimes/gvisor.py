"""gVisor (runsc, Debian 20221219) with `--platform=ptrace --network=none`: the strong tier.

The guest runs on gVisor's user-space kernel (the sentry), which is the isolation boundary;
the host only sees the sentry, gofer and stub processes, confined by runsc's own seccomp
filters and our memory/cpu cgroups. What differs from crun/runc here:

* A host `pids` cgroup crashes the sandbox (the sentry's own threads count against it), so
  pids is not put in the cgroup; `RLIMIT_NPROC` in the guest caps forks instead.
* runsc 20221219 has no `--preserve-fds`, and a host listening socket imported as stdio
  cannot `accept()` inside gVisor. So the guest agent listens on a socket *inside* the
  sandbox, and every host connection to the engine's listening socket is relayed by a
  `runsc exec` of a tiny stdio<->socket bridge. Nothing host-side is writable from inside.
  Each agent call pays one `runsc exec` (about 90 ms). The relay lives in the engine's
  event loop and ends with it (`close`); a re-adopting engine starts its own (`reattach`)
  from the bundle `runsc state` names.
* The sandbox's seccomp profile is applied by the sentry (`--oci-seccomp`) to the guest's
  syscalls, in the form `seccomp.for_gvisor` gives it: runsc ignores `errnoRet` (every
  denial is EPERM), so our clone3 → ENOSYS rule made thread creation fail; clone3 now
  reaches the sentry, which answers ENOSYS itself.
* runsc 20221219's statx refuses AT_NO_AUTOMOUNT with EINVAL, which coreutils 9 always
  passes: `ls -l`, `ls DIR` and `stat` fail inside (Python's os.stat, `find` and globs work).
  Its seccomp cannot answer ENOSYS (for glibc's fallback) either: a known gap of this runsc.
* runsc has no `update`: a pooled gVisor sandbox cannot be shrunk for a smaller request,
  which then starts cold.
* runsc mounts a tmpfs of its own (no size cap) on /tmp unless the spec mounts something
  there: we bind the writable layer's /tmp onto it, so `--disk` caps /tmp too.
* `runsc run --detach` must not get a pipe for stdio (it keeps it open): our start sends both
  to the log file, as for the other OCI runtimes.
* `runsc pause` stops the sentry's tasks (not the host freezer cgroup), and `runsc delete` of
  a paused sandbox panics ("invalid state transition: paused => stopped"): delete resumes
  it first.
* Hibernation is `runsc checkpoint` (the container stops; we delete it) and `runsc restore`
  with the bundle of the start. The agent's socket lives inside the sentry and comes back
  with it; only the relay is new. No relay connection may be open at the checkpoint (the
  engine hibernates idle sandboxes only). The log is opened O_APPEND: a restore puts the
  saved file offsets back.
* runsc's sandbox, gofer and stub processes (named `exe`: runsc re-executes itself) are
  re-parented to the engine, their subreaper. `runsc delete` waits until the sandbox process
  is gone, which a zombie never is, so it timed out after 5 s on every kill: delete reaps
  them while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tartarus.errors import RuntimeUnavailableError
from tartarus.models import Isolation, Resources
from tartarus.runtimes import reaper
from tartarus.runtimes.base import Capabilities, ContainerConfig, ContainerStatus
from tartarus.runtimes.bundle import CAPABILITY_SETS, HOST_UID_BASE, ID_RANGE, build_spec
from tartarus.runtimes.oci_cli import OCIRuntime, _last_line
from tartarus.runtimes.seccomp import for_gvisor

AGENT_DIR = "/run/tartarus"  # a private tmpfs inside the sandbox
AGENT_SOCKET = f"{AGENT_DIR}/agent.sock"
RELAY_SETTLE_S = 10.0  # open relayed connections may finish before a checkpoint

# Runs inside the sandbox (as the sandbox user): bridge stdio to the agent's socket.
RELAY = r"""
import os, socket, sys, threading, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
for _ in range(500):
    try:
        s.connect(sys.argv[1]); break
    except OSError:
        time.sleep(0.01)
else:
    sys.exit(3)
def up():
    while True:
        b = os.read(0, 65536)
        if not b:
            break
        s.sendall(b)
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
threading.Thread(target=up, daemon=True).start()
while True:
    try:
        b = s.recv(65536)
    except OSError as e:
        sys.stderr.write("relay recv %r\n" % e)
        break
    if not b:
        break
    v = memoryview(b)
    while v:
        v = v[os.write(1, v):]
"""


class GvisorRuntime(OCIRuntime):
    name = "gvisor"
    binary = "runsc"
    package = "runsc"
    capabilities = Capabilities(
        isolation=Isolation.USER_KERNEL,
        pause=True,
        checkpoint=True,
        userns=False,
        exec_channel="agent via runsc exec",
    )

    checkpoints_with_network = False  # "checkpoint not supported when using hostinet"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._relays: dict[str, _Relay] = {}

    def command_prefix(self) -> list[str]:
        return [
            self.binary,
            "--root",
            str(self.root),
            "--platform=ptrace",
            "--oci-seccomp",
            "--network=none",
        ]

    async def version(self) -> str:
        _, out, _ = await self._run("--version", prefix=[self.binary])
        return out.splitlines()[0] if out else ""

    async def start(self, config: ContainerConfig, bundle: Path, log: Path) -> int:
        return await self._launch(config, bundle, log, None)

    async def restore(
        self, config: ContainerConfig, bundle: Path, log: Path, image_dir: Path
    ) -> int:
        """`runsc restore` with the bundle written at the start. The agent's socket lives in
        the sandbox's memory and comes back with it; only the host-side relay is new."""
        return await self._launch(config, bundle, log, image_dir)

    async def checkpoint(self, container_id: str, image_dir: Path) -> None:
        # A relay process in the guest would be saved with the host pipes of its `runsc exec`
        # as stdio, which a restore cannot find: stop accepting, let open ones finish.
        relay = self._relays.get(container_id)
        try:
            if relay is not None:
                relay.server.close()
                if relay.active:
                    await asyncio.wait(set(relay.active), timeout=RELAY_SETTLE_S)
                if relay.active:
                    raise RuntimeUnavailableError(
                        "gvisor: a connection to the guest agent is still open"
                    )
            image_dir.mkdir(parents=True, exist_ok=True)
            await self._run("checkpoint", "--image-path", str(image_dir), container_id)
        except BaseException:
            if relay is not None and await self.status(container_id) == ContainerStatus.RUNNING:
                await relay.reopen()
            raise
        await self.delete(container_id)

    async def resize(self, container_id: str, resources: Resources, bundle: Path) -> None:
        # the process limit is the guest's RLIMIT_NPROC, out of the host's reach once started
        raise RuntimeUnavailableError(
            "gvisor cannot change a started sandbox's limits (runsc has no `update`)"
        )

    async def _launch(
        self, config: ContainerConfig, bundle: Path, log: Path, image_dir: Path | None
    ) -> int:
        """`runsc run` (or `restore` from `image_dir`) detached, then the agent's relay."""
        self.root.mkdir(parents=True, exist_ok=True)
        listener: socket.socket | None = None
        if config.pass_fds:
            if len(config.pass_fds) != 1 or "--fd" not in config.args:
                raise RuntimeUnavailableError(
                    "gvisor: runsc 20221219 cannot pass file descriptors into the sandbox"
                )
            listener = socket.socket(fileno=os.dup(config.pass_fds[0]))
            args = list(config.args)
            i = args.index("--fd")
            args[i : i + 2] = ["--listen", AGENT_SOCKET]
            config = dataclasses.replace(config, args=args, pass_fds=[])
        try:
            pid_file = bundle / "init.pid"
            if image_dir is None:
                if config.netns is not None:
                    _unshift_upper(config.rootfs)
                bundle.mkdir(parents=True, exist_ok=True)
                (bundle / "config.json").write_text(json.dumps(gvisor_spec(config)))
                argv = [*self.command_prefix(), "run", "--detach"]
            else:
                pid_file.unlink(missing_ok=True)
                argv = [*self.command_prefix(), "restore", "--detach"]
                argv += ["--image-path", str(image_dir)]
            argv += ["--bundle", str(bundle), "--pid-file", str(pid_file), config.id]
            if config.netns is not None:  # Styx: hostinet inside our netns (no `ip netns
                # exec`: it remounts /sys and runsc loses the cgroups)
                self._netns_file(config.id).write_text(str(config.netns))
                argv = ["nsenter", f"--net={config.netns}", *argv]
                argv[argv.index("--network=none")] = "--network=host"
            # a file, never a pipe: runsc keeps it open; O_APPEND because a restore puts the
            # saved file offset back
            with open(log, "ab") as logf:
                offset = logf.tell()
                proc = await reaper.spawn(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf
                )
                await proc.wait()
            if proc.returncode != 0:
                with open(log, "rb") as reader:
                    reader.seek(offset)
                    err = reader.read(65536).decode(errors="replace")
                what = "start" if image_dir is None else "restore"
                raise RuntimeUnavailableError(
                    f"{self.name} could not {what} the sandbox: {_last_line(err)}"
                )
            pid = int(pid_file.read_text().strip())
            if config.netns is not None:  # valid in every mount namespace, unlike the path
                self._netns_file(config.id).write_text(f"/proc/{pid}/ns/net")
            if listener is not None:
                await self._start_relay(config.id, config.uid, config.gid, config.args[0], listener)
                listener = None
            return pid
        finally:
            if listener is not None:
                listener.close()

    async def reattach(self, container_id: str, socket_path: Path) -> None:
        """Relay again to the agent of a sandbox an earlier engine started (re-adoption):
        the agent still listens inside the sentry; only the engine side ended with it. If
        the sandbox is gone there is nothing to relay to, and the agent's ping says so."""
        if container_id in self._relays:
            return
        rc, out, _ = await self._run("state", container_id, check=False)
        if rc != 0:
            return
        bundle = Path(json.loads(out)["bundle"])
        process = json.loads((bundle / "config.json").read_text())["process"]
        user = process["user"]
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()  # the dead engine's
            listener.bind(str(socket_path))
            listener.listen(64)
            await self._start_relay(
                container_id, user["uid"], user["gid"], process["args"][0], listener
            )
        except BaseException:
            listener.close()
            raise

    async def _start_relay(
        self, cid: str, uid: int, gid: int, python: str, listener: socket.socket
    ) -> None:
        process = {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": [python, "-I", "-S", "-c", RELAY, AGENT_SOCKET],
            "env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "cwd": "/",
            "capabilities": {k: [] for k in CAPABILITY_SETS},
            "noNewPrivileges": True,
        }
        work = Path(tempfile.mkdtemp(prefix=f"relay-{cid}-", dir=self.root))
        spec_path = work / "process.json"
        spec_path.write_text(json.dumps(process))
        argv = [*self._prefix_for(cid), "exec", "--process", str(spec_path), cid]

        active: set[asyncio.Task[Any]] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            active.add(task)
            try:
                await relay_one(reader, writer)
            except asyncio.CancelledError:  # the loop is ending: a connection task of the
                pass  # server's own, whose cancellation 3.11 reports as an error in a callback
            finally:
                active.discard(task)

        async def relay_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            proc = await reaper.spawn(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            assert proc.stdin is not None and proc.stdout is not None
            to_guest, from_guest = proc.stdin, proc.stdout

            async def up() -> None:
                with contextlib.suppress(OSError, ConnectionError):
                    while chunk := await reader.read(65536):
                        to_guest.write(chunk)
                        await to_guest.drain()
                with contextlib.suppress(OSError, ConnectionError):
                    to_guest.close()

            async def down() -> None:
                with contextlib.suppress(OSError, ConnectionError):
                    while chunk := await from_guest.read(65536):
                        writer.write(chunk)
                        await writer.drain()

            pump = asyncio.ensure_future(up())
            try:
                await down()
            finally:
                pump.cancel()
                writer.close()
                # os.kill, not proc.kill(): that polls first, and a poll that reaps the exited
                # relay steals it from asyncio's watcher ("Unknown child process" on stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                # runsc exec hands its stdio to the sentry, which keeps the pipes open while
                # the guest relay lives (a main command's stream): wait() would wait for them.
                # Only the pipes: closing the transport polls, which reaps, as kill() would.
                transport: asyncio.SubprocessTransport = proc._transport  # type: ignore[attr-defined]
                for fd in (0, 1):
                    if (pipe := transport.get_pipe_transport(fd)) is not None:
                        pipe.close()
                await proc.wait()

        listener.setblocking(False)
        path = str(listener.getsockname())
        server = await asyncio.start_unix_server(handle, sock=listener)
        self._relays[cid] = _Relay(server, handle, path, active)

    # runsc's control socket is an abstract one, which lives in a network namespace: for a
    # sandbox started in ours (Styx), every runsc command must run in it too, or runsc
    # cannot reach the sandbox and calls it stopped
    def _netns_file(self, container_id: str) -> Path:
        return self.root / f"{container_id}.netns"

    def _prefix_for(self, container_id: str) -> list[str]:
        try:
            netns = self._netns_file(container_id).read_text().strip()
        except OSError:
            return self.command_prefix()
        return ["nsenter", f"--net={netns}", *self.command_prefix()]

    async def _run(
        self, *args: str, prefix: list[str] | None = None, check: bool = True
    ) -> tuple[int, str, str]:
        if prefix is None:
            for arg in args:
                if arg.startswith("sb-") and self._netns_file(arg).exists():
                    prefix = self._prefix_for(arg)
        return await super()._run(*args, prefix=prefix, check=check)

    async def close(self) -> None:
        """Stop every relay: the engine is closing, and a sandbox it leaves running is out
        of the next engine's reach (see the module docstring)."""
        for container_id in list(self._relays):
            await self._stop_relay(container_id)

    async def _stop_relay(self, container_id: str) -> None:
        relay = self._relays.pop(container_id, None)
        if relay is not None:
            relay.server.close()
            for work in self.root.glob(f"relay-{container_id}-*"):
                for f in work.iterdir():
                    f.unlink()
                work.rmdir()

    async def delete(self, container_id: str) -> None:
        await self._stop_relay(container_id)
        if await self.status(container_id) == ContainerStatus.PAUSED:
            await self._run("resume", container_id, check=False)
        deleting = asyncio.ensure_future(super().delete(container_id))
        while not deleting.done():
            _reap_runsc_zombies()
            await asyncio.wait({deleting}, timeout=0.05)
        await deleting
        self._netns_file(container_id).unlink(missing_ok=True)


@dataclasses.dataclass
class _Relay:
    """The engine side of a sandbox's agent relay: a unix server at `path`."""

    server: asyncio.Server
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    path: str
    active: set[asyncio.Task[Any]]  # connections being relayed

    async def reopen(self) -> None:
        """Listen again at the same path (after a checkpoint that did not happen)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.server = await asyncio.start_unix_server(self.handle, path=self.path)


def _reap_runsc_zombies() -> None:
    """Collect runsc's exited helper processes re-parented to us (see the module docstring).

    Only zombies named `exe`, and never one that asyncio waits for (reaper's spawned list):
    a stolen exit leaves asyncio logging "Unknown child process" (exit 255)."""
    me = str(os.getpid())
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
        if fields.get("PPid") != me or fields.get("Name") != "exe":
            continue
        if int(status.parent.name) in reaper._spawned:  # asyncio's to wait for
            continue
        if fields.get("State", "").startswith("Z"):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(status.parent.name), os.WNOHANG)


def _unshift_upper(rootfs: Path) -> None:
    """Without a user namespace (a sandbox with a netns: see `gvisor_spec`), the gofer uses
    host ids as they are: give what the engine pre-created in the writable layer (home,
    workdir, /tmp, owned by the user-namespace ids 100000+) the plain ids the guest runs as.
    Only the overlay's upper dir is walked, which holds just those at the start."""
    upper: str | None = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(rootfs) and "upperdir=" in line:
                upper = line.split("upperdir=", 1)[1].split(",")[0].split()[0]
    if upper is None:
        return
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if HOST_UID_BASE <= st.st_uid < HOST_UID_BASE + ID_RANGE:
                os.lchown(path, st.st_uid - HOST_UID_BASE, st.st_gid - HOST_UID_BASE)


def gvisor_spec(config: ContainerConfig) -> dict[str, Any]:
    """Our usual bundle, minus what gVisor cannot take (see the module docstring)."""
    spec = build_spec(config)
    linux = spec["linux"]
    if config.netns is not None:  # runsc is started inside it (`_launch`)
        # hostinet cannot run in a user namespace that does not own the netns (runsc's
        # chroot fails with EPERM): the sentry stays in ours, as it does under Docker
        drop = ("network", "user")
        linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] not in drop]
        linux.pop("uidMappings", None)
        linux.pop("gidMappings", None)
        for mount in spec["mounts"]:  # the sentry's own sysfs, as without a netns
            if mount["destination"] == "/sys":
                mount.update(
                    type="sysfs", source="sysfs", options=["nosuid", "noexec", "nodev", "ro"]
                )
    pids = linux["resources"].pop("pids", {}).get("limit") or config.resources.pids
    rlimits = [r for r in spec["process"]["rlimits"] if r["type"] != "RLIMIT_NPROC"]
    rlimits.append({"type": "RLIMIT_NPROC", "hard": pids, "soft": pids})
    spec["process"]["rlimits"] = rlimits
    linux["seccomp"] = for_gvisor(linux["seccomp"])
    # Without a /tmp mount runsc puts its own unbounded tmpfs there: /tmp must stay the
    # writable layer's, under the --disk cap like every other path.
    if (Path(config.rootfs) / "tmp").is_dir():
        tmp = {"destination": "/tmp", "type": "bind", "source": f"{config.rootfs}/tmp"}
        spec["mounts"].append({**tmp, "options": ["rbind", "rw", "nosuid", "nodev"]})
    spec["mounts"].append(
        {
            "destination": AGENT_DIR,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": [
                "nosuid",
                "nodev",
                "noexec",
                "mode=700",
                f"uid={config.uid}",
                f"gid={config.gid}",
                "size=64k",
            ],
        }
    )
    return spec
