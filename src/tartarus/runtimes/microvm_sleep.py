"""Pausing a microVM and saving it to a file and back: QMP `stop`/`cont` and migration.

Pause is `stop`: the vCPUs halt, memory and devices stay in QEMU. Hibernation is a migration
into a file (`migrate exec:cat > state`) of a stopped VM, RAM included, after which QEMU ends;
waking starts a QEMU with the same devices and `-incoming defer`, loads the file and goes on.
A clone's RAM was a private mapping of its template's RAM file; the saved state carries every
page the guest has, so the woken VM gets plain anonymous memory of the same name (`mem0`,
microvm_qemu.memory) and no longer depends on the template.

The probe runs both on a tiny guest (the initramfs in `hold` mode, printing a mark every
second), so `pause` and `checkpoint` are reported only where they really worked here.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

from tartarus.errors import RuntimeUnavailableError
from tartarus.runtimes import microvm_image, microvm_qemu, reaper
from tartarus.runtimes.microvm_qmp import QMP

NO_IGNORE_SHARED = [{"capability": "x-ignore-shared", "state": False}]
BANDWIDTH = 1 << 34  # bytes/s: QEMU's default (32 MiB/s) is for live migration over a network
SAVE_TIMEOUT_S = 300.0
LOAD_TIMEOUT_S = 120.0
PROBE_S = 60.0


async def pause(qmp_sock: Path) -> None:
    qmp = await QMP.connect(qmp_sock)
    try:
        await qmp.execute("stop")
        await qmp.wait_status("paused")
    finally:
        await qmp.close()


async def resume(qmp_sock: Path) -> None:
    qmp = await QMP.connect(qmp_sock)
    try:
        await qmp.execute("cont")
        await qmp.wait_status("running")
    finally:
        await qmp.close()


async def save(qmp_sock: Path, state: Path) -> None:
    """Stop the VM and write all of it (RAM included) to `state`; QEMU quits after. If the
    save fails, the VM goes on running as before."""
    qmp = await QMP.connect(qmp_sock)
    try:
        running = (await qmp.execute("query-status"))["status"] == "running"
        await qmp.execute("stop")
        try:
            await qmp.execute("migrate-set-capabilities", capabilities=NO_IGNORE_SHARED)
            await qmp.execute("migrate-set-parameters", **{"max-bandwidth": BANDWIDTH})
            await qmp.execute("migrate", uri=f"exec:cat > {state}")
            await qmp.wait_migration(timeout=SAVE_TIMEOUT_S)
        except BaseException:
            with contextlib.suppress(RuntimeUnavailableError, OSError):
                await qmp.execute("migrate_cancel")
                if running:
                    await qmp.execute("cont")
            raise
        with contextlib.suppress(RuntimeUnavailableError):  # it closes QMP as it quits
            await qmp.execute("quit")
    finally:
        await qmp.close()


async def load(qmp_sock: Path, state: Path) -> None:
    """Into a QEMU started with `-incoming defer`: load `state` and let the VM go on."""
    qmp = await QMP.connect(qmp_sock)
    try:
        await qmp.execute("migrate-set-capabilities", capabilities=NO_IGNORE_SHARED)
        await qmp.execute("migrate-incoming", uri=f"exec:cat {state}")
        status = await qmp.wait_status("paused", "running", timeout=LOAD_TIMEOUT_S)
        if status == "paused":  # saved stopped: no autostart
            await qmp.execute("cont")
    finally:
        await qmp.close()


async def probe(accel: str, initrd: Path, work: Path) -> tuple[str, str]:
    """Pause, resume, save and restore a tiny guest under `accel`; returns why pause and
    why checkpoint do not work ("" where they do)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        first = _Guest(accel, initrd, work, "a")
        try:
            await first.start(incoming=False)
            await first.wait_mark()
            try:
                await pause(first.qmp_sock)
                await resume(first.qmp_sock)
                await first.wait_mark()
            except (RuntimeUnavailableError, OSError, TimeoutError) as exc:
                why = f"pause/resume failed: {exc}"
                return why, why
            try:
                await save(first.qmp_sock, work / "state")
            except (RuntimeUnavailableError, OSError) as exc:
                return "", f"saving a probe guest failed: {exc}"
        finally:
            await first.stop()
        second = _Guest(accel, initrd, work, "b")
        try:
            await second.start(incoming=True)
            await load(second.qmp_sock, work / "state")
            await second.wait_mark()
        except (RuntimeUnavailableError, OSError, TimeoutError) as exc:
            return "", f"restoring a probe guest failed: {exc}"
        finally:
            await second.stop()
        return "", ""
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Guest:
    """A probe guest: the initramfs alone, its console on a pipe, QMP on a socket."""

    def __init__(self, accel: str, initrd: Path, work: Path, name: str) -> None:
        self.argv = [*microvm_qemu.machine(accel, 128, 1), *microvm_qemu.memory(128)]
        self.argv += ["-serial", "stdio", *microvm_qemu.boot_args(initrd, "hold", "")]
        self.qmp_sock = work / f"qmp-{name}.sock"
        self.argv += ["-qmp", f"unix:{self.qmp_sock},server=on,wait=off"]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, incoming: bool) -> None:
        argv = [*self.argv, "-incoming", "defer"] if incoming else self.argv
        self.proc = await reaper.spawn(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(10.0):
            while not self.qmp_sock.exists():
                if self.proc.returncode is not None:
                    raise RuntimeUnavailableError("the probe guest's QEMU ended at start")
                await asyncio.sleep(0.01)

    async def wait_mark(self) -> None:
        """Until the guest prints its mark again (its userspace runs)."""
        assert self.proc is not None and self.proc.stdout is not None
        mark = microvm_image.PROBE_MARK.encode()
        async with asyncio.timeout(PROBE_S):
            while line := await self.proc.stdout.readline():
                if mark in line:
                    return
        raise RuntimeUnavailableError("the probe guest ended")

    async def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
