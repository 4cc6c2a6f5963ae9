"""Nyx for microVMs: one template snapshot per VM plan, and every sandbox a copy-on-write clone.

A cold boot costs seconds under TCG; restoring a snapshot costs a QEMU start and a state
load. So the first sandbox of a plan (image, guest files, memory, vCPUs, disk size, the agent's
arguments and pre-created directories) boots a template VM whose RAM is a file
(`memory-backend-file,share=on`), waits for its agent (and for its zygote's pre-imports:
python-ds), disconnects, and saves only the device state (`x-ignore-shared`: the RAM file
is the memory image), about 0.1 MB. Every sandbox of
that plan, the first included, is then a clone: QEMU maps the RAM file `share=off` (private,
copy-on-write: pages are shared through the page cache until written) and loads the state
with `-incoming defer`; its writable disk is a sparse copy of the template's, which matches
the guest's cached view of it.

Clones would share the template's clock and random state: the channel's HELLO carries the
host's time and fresh entropy, which the guest's PID 1 applies (clock_settime,
RNDADDENTROPY + RNDRESEEDCRNG) before it says READY, together with this sandbox's deadline
and environment for the agent that has been running since the template's boot.

Templates stay in the runtime's state dir (RAM file plus a sparse disk per plan) until
removed by hand; a changed kernel, image or QEMU makes a new plan key.
`TARTARUS_MICROVM_CLONES=0` boots every sandbox cold instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tartarus.errors import RuntimeUnavailableError
from tartarus.guest import protocol
from tartarus.models import Resources
from tartarus.runtimes import microvm_image, microvm_qemu, reaper, spawn
from tartarus.runtimes.base import GuestNetwork
from tartarus.runtimes.bundle import QEMU_UID
from tartarus.runtimes.microvm_channel import Channel
from tartarus.runtimes.microvm_qmp import QMP

RESTORE_TIMEOUT_S = 60.0
HOST_SOCKET = "host.sock"  # the builder's own connection to the template's agent
IGNORE_SHARED = [{"capability": "x-ignore-shared", "state": True}]


def enabled() -> bool:
    return os.environ.get("TARTARUS_MICROVM_CLONES", "1") != "0"


@dataclass(frozen=True)
class Template:
    directory: Path
    env: dict[str, str]  # the environment its agent started with

    @property
    def ram(self) -> Path:
        return self.directory / "ram"

    @property
    def state(self) -> Path:
        return self.directory / "state"

    @property
    def rw(self) -> Path:
        return self.directory / "rw.ext4"


def _listing(upper: Path | None) -> list[tuple[str, int, int, int]]:
    """What the engine pre-created in the host layer (a clone gets the template's)."""
    if upper is None or not upper.is_dir():
        return []
    out = []
    for path in sorted(upper.rglob("*")):
        st = path.lstat()
        out.append((str(path.relative_to(upper)), st.st_mode, st.st_uid, st.st_gid))
    return out


class Templates:
    def __init__(self, root: Path) -> None:
        self.root = root / "templates"
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(
        self,
        container_id: str,
        plan: microvm_qemu.Plan,
        boot: dict[str, Any],
        upper: Path | None,
        binds: list[tuple[str, str]],
        resources: Resources,
        timeout: float,
    ) -> Template:
        """The template for this plan, booted and saved now if there is none yet (the
        QEMU doing it runs in `container_id`'s cgroups)."""
        fields: list[object] = [plan.key(), {k: v for k, v in boot.items() if k != "env"}]
        fields += [binds, _listing(upper), resources.disk_mb]
        key = hashlib.sha256(json.dumps(fields, default=str).encode()).hexdigest()[:24]
        target = self.root / key
        async with (
            self._locks.setdefault(key, asyncio.Lock()),
            microvm_image.building(target.with_name(f"{target.name}.lock")),
        ):
            if not (target / "env.json").is_file():
                await self._build(
                    container_id, plan, boot, upper, binds, resources, timeout, target
                )
        env = json.loads((target / "env.json").read_text())
        return Template(target, env)

    async def _build(
        self,
        container_id: str,
        plan: microvm_qemu.Plan,
        boot: dict[str, Any],
        upper: Path | None,
        binds: list[tuple[str, str]],
        resources: Resources,
        timeout: float,
        target: Path,
    ) -> None:
        work = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        work.mkdir(parents=True)
        # QEMU writes the state as its own unprivileged uid (`exec:cat`): the directory is its
        os.chown(work, QEMU_UID, QEMU_UID)
        pid: int | None = None
        try:
            rw = work / "rw.ext4"
            await microvm_image.writable_layer(rw, upper, resources.disk_mb, boot, binds)
            log = work / "console.log"
            pid = await microvm_qemu.launch(
                container_id, plan, work, log, rw, resources, ram=work / "ram", share=True
            )
            channel = Channel()
            try:
                await channel.connect(work / "agent.sock")
                await microvm_qemu.wait_ready(channel, pid, log, timeout)
                if _preimports(boot["args"]):
                    await _wait_warm(channel, work, timeout)
            finally:  # the snapshot must hold no host connection
                await channel.close()
                (work / HOST_SOCKET).unlink(missing_ok=True)
            qmp = await QMP.connect(work / "qmp.sock")
            try:
                await qmp.execute("migrate-set-capabilities", capabilities=IGNORE_SHARED)
                await qmp.execute("stop")
                await qmp.execute("migrate", uri=f"exec:cat > {work / 'state'}")
                await qmp.wait_migration()
                with contextlib.suppress(RuntimeUnavailableError):
                    await qmp.execute("quit")
            finally:
                await qmp.close()
            await _end(pid)
            pid = None
            for name in ("agent.sock", "qmp.sock", "qemu.pid"):
                (work / name).unlink(missing_ok=True)
            (work / "env.json").write_text(json.dumps(boot["env"]))
            work.rename(target)
        except BaseException:
            if pid is not None:
                await _end(pid)
            shutil.rmtree(work, ignore_errors=True)
            raise


async def clone(
    container_id: str,
    plan: microvm_qemu.Plan,
    template: Template,
    directory: Path,
    log: Path,
    resources: Resources,
    settings: dict[str, Any],
    netns: Path | None = None,
    network: GuestNetwork | None = None,
) -> tuple[int, Channel]:
    """Start `container_id` as a clone of `template`; returns QEMU's pid and the channel
    to its agent, which has this sandbox's deadline and environment (`settings`), in
    `netns` with the guest's NIC at `network`."""
    rw = directory / "rw.ext4"
    rc, _, err = await spawn.run(["cp", "--sparse=always", str(template.rw), str(rw)])
    if rc != 0:
        raise RuntimeUnavailableError(f"microvm: cannot copy the template's disk: {err!r}")
    # an incoming VM opens its disks again at `cont`, by then as QEMU's own uid
    os.chown(rw, QEMU_UID, QEMU_UID)
    pid = await microvm_qemu.launch(
        container_id,
        plan,
        directory,
        log,
        rw,
        resources,
        ram=template.ram,
        share=False,
        incoming=True,
        netns=netns,
    )
    qmp = await QMP.connect(directory / "qmp.sock")
    try:
        await qmp.execute("migrate-set-capabilities", capabilities=IGNORE_SHARED)
        await qmp.execute("migrate-incoming", uri=f"exec:cat {template.state}")
        status = await qmp.wait_status("paused", "running", timeout=RESTORE_TIMEOUT_S)
        if status == "paused":  # the template was stopped when saved: no autostart
            await qmp.execute("cont")
    finally:
        await qmp.close()
    channel = Channel()
    try:
        await channel.connect(directory / "agent.sock", agent=settings, network=network)
        await microvm_qemu.wait_ready(channel, pid, log, RESTORE_TIMEOUT_S)
    except BaseException:
        await channel.close()
        raise
    return pid, channel


def _preimports(args: list[str]) -> bool:
    return "--preimport" in args and bool(args[args.index("--preimport") + 1])


async def _wait_warm(channel: Channel, work: Path, timeout: float) -> None:
    """Until the agent's zygote has done the template's pre-imports, so every clone has
    them (python-ds: seconds of imports under TCG). A zygote that failed is started again
    by each clone's agent; a slow one is saved as it is when `timeout` passes."""
    path = work / HOST_SOCKET
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        listener.listen(4)
    except BaseException:
        listener.close()
        raise
    await channel.serve(listener)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await asyncio.to_thread(_zygote_state, path) == "starting":
        if loop.time() > deadline:
            return
        await asyncio.sleep(0.2)


def _zygote_state(path: Path) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30.0)
        sock.connect(str(path))
        protocol.send_frame(sock, {"op": "ping"})
        frame = protocol.recv_frame(sock)
    return str(frame[0].get("zygote", "off")) if frame is not None else "off"


async def _end(pid: int) -> None:
    if microvm_qemu.alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    await reaper.reap(pid, timeout=5.0)
