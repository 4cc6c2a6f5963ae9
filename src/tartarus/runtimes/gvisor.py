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
  event loop: after an engine restart the agent of a surviving sandbox is unreachable.
* Our OCI seccomp profile (`--oci-seccomp`) makes thread creation fail inside gVisor
  ("can't start new thread" in the agent), so it is not loaded: the sentry filters itself.
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
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tartarus.errors import RuntimeUnavailableError
from tartarus.runtimes import reaper
from tartarus.runtimes.base import Capabilities, ContainerConfig, ContainerStatus
from tartarus.runtimes.bundle import CAPABILITY_SETS, build_spec
from tartarus.runtimes.oci_cli import OCIRuntime, _last_line

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
        pause=True, checkpoint=True, userns=False, exec_channel="agent via runsc exec"
    )

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._relays: dict[str, _Relay] = {}

    def command_prefix(self) -> list[str]:
        return [
            self.binary,
            "--root",
            str(self.root),
            "--platform=ptrace",
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
                bundle.mkdir(parents=True, exist_ok=True)
                (bundle / "config.json").write_text(json.dumps(gvisor_spec(config)))
                argv = [*self.command_prefix(), "run", "--detach"]
            else:
                pid_file.unlink(missing_ok=True)
                argv = [*self.command_prefix(), "restore", "--detach"]
                argv += ["--image-path", str(image_dir)]
            argv += ["--bundle", str(bundle), "--pid-file", str(pid_file), config.id]
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
            if listener is not None:
                await self._start_relay(config, listener)
                listener = None
            return pid
        finally:
            if listener is not None:
                listener.close()

    async def _start_relay(self, config: ContainerConfig, listener: socket.socket) -> None:
        cid = config.id
        process = {
            "terminal": False,
            "user": {"uid": config.uid, "gid": config.gid},
            "args": [config.args[0], "-I", "-S", "-c", RELAY, AGENT_SOCKET],
            "env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "cwd": "/",
            "capabilities": {k: [] for k in CAPABILITY_SETS},
            "noNewPrivileges": True,
        }
        work = Path(tempfile.mkdtemp(prefix=f"relay-{cid}-", dir=self.root))
        spec_path = work / "process.json"
        spec_path.write_text(json.dumps(process))
        argv = [*self.command_prefix(), "exec", "--process", str(spec_path), cid]

        active: set[asyncio.Task[Any]] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            active.add(task)
            try:
                await relay_one(reader, writer)
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
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

        listener.setblocking(False)
        path = str(listener.getsockname())
        server = await asyncio.start_unix_server(handle, sock=listener)
        self._relays[cid] = _Relay(server, handle, path, active)

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

    Only zombies named `exe`: the processes we spawn and asyncio waits for are `runsc`."""
    me = str(os.getpid())
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
        if fields.get("PPid") != me or fields.get("Name") != "exe":
            continue
        if fields.get("State", "").startswith("Z"):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(status.parent.name), os.WNOHANG)


def gvisor_spec(config: ContainerConfig) -> dict[str, Any]:
    """Our usual bundle, minus what gVisor cannot take (see the module docstring)."""
    spec = build_spec(config)
    linux = spec["linux"]
    pids = linux["resources"].pop("pids", {}).get("limit") or config.resources.pids
    rlimits = [r for r in spec["process"]["rlimits"] if r["type"] != "RLIMIT_NPROC"]
    rlimits.append({"type": "RLIMIT_NPROC", "hard": pids, "soft": pids})
    spec["process"]["rlimits"] = rlimits
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
