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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from tartarus.errors import RuntimeUnavailableError
from tartarus.runtimes import reaper
from tartarus.runtimes.base import Capabilities, ContainerConfig
from tartarus.runtimes.bundle import CAPABILITY_SETS, build_spec
from tartarus.runtimes.oci_cli import OCIRuntime, _last_line

AGENT_DIR = "/run/tartarus"  # a private tmpfs inside the sandbox
AGENT_SOCKET = f"{AGENT_DIR}/agent.sock"

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
    capabilities = Capabilities(pause=True, checkpoint=False, userns=False)

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._relays: dict[str, asyncio.Server] = {}

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
            bundle.mkdir(parents=True, exist_ok=True)
            (bundle / "config.json").write_text(json.dumps(gvisor_spec(config)))
            pid_file = bundle / "init.pid"
            argv = [*self.command_prefix(), "run", "--detach", "--bundle", str(bundle)]
            argv += ["--pid-file", str(pid_file), config.id]
            with open(log, "ab") as logf:  # a file, never a pipe: runsc keeps it open
                offset = logf.tell()
                proc = await reaper.spawn(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf
                )
                await proc.wait()
            if proc.returncode != 0:
                with open(log, "rb") as reader:
                    reader.seek(offset)
                    err = reader.read(65536).decode(errors="replace")
                raise RuntimeUnavailableError(
                    f"{self.name} could not start the sandbox: {_last_line(err)}"
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

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
        self._relays[cid] = await asyncio.start_unix_server(handle, sock=listener)

    async def _stop_relay(self, container_id: str) -> None:
        server = self._relays.pop(container_id, None)
        if server is not None:
            server.close()
            for work in self.root.glob(f"relay-{container_id}-*"):
                for f in work.iterdir():
                    f.unlink()
                work.rmdir()

    async def delete(self, container_id: str) -> None:
        await self._stop_relay(container_id)
        await super().delete(container_id)


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
