"""Probing microvm on this host: which accelerator really runs a guest, and whether pause and
hibernation work.

Creating a KVM VM proves nothing: on a PVM host /dev/kvm opens, but a stock guest kernel
never leaves KVM's instruction emulator. So a tiny guest (the initramfs alone) is booted under
KVM with a short deadline and under TCG, and the accelerator is the one whose guest printed
its mark in time; the result is kept in `accelerator.json` for the sandboxes' plans. Then
microvm_sleep.probe pauses, saves and restores one, so the capabilities are what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from pathlib import Path

from tartarus.errors import RuntimeUnavailableError
from tartarus.runtimes import microvm_image, microvm_qemu, microvm_sleep, reaper, spawn
from tartarus.runtimes.base import ProbeResult
from tartarus.runtimes.microvm_qemu import QEMU

KVM_PROBE_S = 6.0  # a real KVM guest reaches userspace in well under a second
TCG_PROBE_S = 60.0
PACKAGE = "qemu-system-x86"


def _accel_file(root: Path) -> Path:
    return root / "accelerator.json"


def accelerator(root: Path) -> str:
    """`kvm` if the last probe booted a guest under it, else `tcg`."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(_accel_file(root).read_text()).get("accelerator") == "kvm":
            return "kvm"
    return "tcg"


async def probe(root: Path) -> ProbeResult:
    hint = f"apt-get install {PACKAGE} (or run scripts/setup.sh)"
    if shutil.which(QEMU) is None:
        return ProbeResult(False, reason=f"{QEMU} not found", hint=hint)
    try:
        microvm_image.kernel()
        initrd = microvm_image.initramfs(root / "cache")
    except RuntimeUnavailableError as exc:
        return ProbeResult(False, reason=str(exc), hint="run scripts/setup.sh")
    rc, out, _ = await spawn.run([QEMU, "--version"])
    words = out.decode(errors="replace").split() if rc == 0 else []
    # "QEMU emulator version 7.2.22 (Debian ...)": doctor shows the last word
    version = f"QEMU {words[3]}" if len(words) > 3 else ""
    kvm_why, tcg_why = await asyncio.gather(_boot("kvm", initrd), _boot("tcg", initrd))
    accel = "kvm" if kvm_why is None else "tcg" if tcg_why is None else None
    root.mkdir(parents=True, exist_ok=True)
    _accel_file(root).write_text(json.dumps({"accelerator": accel or "tcg"}))
    detail = f"accelerator: {accel}" if accel else ""
    if accel == "tcg":
        detail += f" (not KVM: {kvm_why})"
    if accel is None:
        return ProbeResult(
            False, version, reason=f"no guest booted: {tcg_why}", hint=hint, detail=detail
        )
    work = root / f"probe-{os.getpid()}"
    pause_error, checkpoint_error = await microvm_sleep.probe(accel, initrd, work)
    return ProbeResult(
        True,
        version,
        detail=detail,
        pause=not pause_error,
        pause_error=pause_error,
        checkpoint=not checkpoint_error,
        checkpoint_error=checkpoint_error,
    )


async def _boot(accel: str, initrd: Path) -> str | None:
    """Boot the initramfs alone under `accel`; None if it reached userspace in time, else
    why not."""
    if accel == "kvm":
        if not os.path.exists("/dev/kvm"):
            return "no /dev/kvm"
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "/dev/kvm is not accessible"
    deadline = KVM_PROBE_S if accel == "kvm" else TCG_PROBE_S
    argv = [*microvm_qemu.machine(accel, 128, 1), "-serial", "stdio"]
    argv += microvm_qemu.boot_args(initrd, "probe", "")
    proc = await reaper.spawn(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output = b""
    try:
        async with asyncio.timeout(deadline):
            while chunk := await proc.stdout.read(4096):
                output += chunk
                if microvm_image.PROBE_MARK.encode() in output:
                    return None
    except TimeoutError:
        why = f"a probe guest did not reach userspace under {accel.upper()} in {deadline:g} s"
        if accel == "kvm" and Path("/sys/module/kvm_pvm").exists():
            why += " (/dev/kvm is PVM: stock guest kernels run in its instruction emulator)"
        return why
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    lines = output.decode(errors="replace").strip().splitlines()
    failed = [line for line in lines if microvm_image.FAIL_MARK in line]
    last = failed[-1:] or lines[-1:] or ["no output"]
    return f"the probe guest under {accel.upper()} ended early: {last[0]}"
