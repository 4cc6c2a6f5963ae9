"""The microvm runtime end to end through the engine: a QEMU guest with its own kernel,
the unchanged guest agent over virtio-serial, limits, and nothing left behind."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from tartarus.errors import (
    ConflictError,
    InvalidRequestError,
    RuntimeUnavailableError,
)
from tartarus.models import Resources, SandboxSpec, SandboxState
from tartarus.node.engine import Engine
from tartarus.runtimes.bundle import CGROUP_PARENT, QEMU_UID
from tartarus.runtimes.microvm_qemu import QEMU_OVERHEAD_MB

pytestmark = pytest.mark.slow  # each guest boots under TCG here: seconds


async def _run(engine: Engine, sid: str, *argv: str) -> tuple[int, bytes, bytes]:
    out: list[bytes] = []
    err: list[bytes] = []

    async def so(b: bytes) -> None:
        out.append(b)

    async def se(b: bytes) -> None:
        err.append(b)

    r = await engine.exec(sid, list(argv), on_stdout=so, on_stderr=se, timeout=120)
    return r.exit_code or 0, b"".join(out), b"".join(err)


def _root() -> Path:
    return Path(os.environ["TARTARUS_STATE_DIR"]) / "runtime" / "microvm"


def _qemu_of(sid: str) -> bytes:
    ps = subprocess.run(["pgrep", "-f", f"qemu-system.*{sid}"], capture_output=True, check=False)
    return ps.stdout


async def test_microvm_end_to_end(engine: Engine, microvm: str) -> None:
    resources = Resources(memory_mb=256, cpu=1, disk_mb=48, pids=64)
    sb = await engine.create(SandboxSpec(runtime=microvm, timeout=300, resources=resources))
    sid = sb.id
    try:
        assert sb.runtime == "microvm" and sb.state == SandboxState.RUNNING
        assert await _run(engine, sid, "python3", "-c", "print(1)") == (0, b"1\n", b"")
        rc, out, err = await _run(engine, sid, "sh", "-c", "echo o; echo e >&2; exit 3")
        assert (rc, out, err) == (3, b"o\n", b"e\n")
        # its own kernel (Debian's cloud kernel), not the host's
        _, version, _ = await _run(engine, sid, "cat", "/proc/version")
        assert b"cloud-amd64" in version
        assert os.uname().release.encode() not in version
        agent = engine.agent(sid)
        await agent.write_file("notes/x.txt", b"hello from the host")
        assert await agent.read_file("notes/x.txt") == b"hello from the host"
        _, out, _ = await _run(engine, sid, "cat", "notes/x.txt")
        assert out == b"hello from the host"
        assert (await agent.run_code("x = 41")).error is None
        assert (await agent.run_code("x + 1")).value == "42"
        # the sandbox user; network none: a NIC on nothing, down, no route; the guest's
        # vCPUs and memory from the resources
        _, out, _ = await _run(engine, sid, "id", "-u")
        assert out == b"1000\n"
        probe = (
            "import os; nics = sorted(os.listdir('/sys/class/net'));"
            " up = [n for n in nics if open(f'/sys/class/net/{n}/operstate').read() == 'up\\n'];"
            " routes = open('/proc/net/route').read().splitlines()[1:];"
            " print(nics, up, routes, os.cpu_count())"
        )
        _, out, _ = await _run(engine, sid, "python3", "-c", probe)
        assert out == b"['eth0', 'lo'] [] [] 1\n"
        _, out, _ = await _run(engine, sid, "sh", "-c", "grep MemTotal /proc/meminfo")
        assert 150 * 1024 < int(out.split()[1]) <= 256 * 1024
        # the writable layer is the disk limit
        rc, _, err = await _run(
            engine, sid, "sh", "-c", "dd if=/dev/zero of=big bs=1M count=80 2>&1 >/dev/null"
        )
        assert rc != 0
        # QEMU itself runs in the sandbox's memory cgroup, limited
        memcg = Path("/sys/fs/cgroup/memory") / CGROUP_PARENT / sid
        if memcg.is_dir():
            limit = int((memcg / "memory.limit_in_bytes").read_text())
            assert limit == (256 + QEMU_OVERHEAD_MB) << 20
            procs = (memcg / "cgroup.procs").read_text().split()
            assert str(engine._live[sid].init_pid) in procs
        assert _qemu_of(sid)
        # QEMU runs as its own unprivileged uid, outside every container's range
        status = Path(f"/proc/{engine._live[sid].init_pid}/status").read_text()
        assert f"Uid:\t{QEMU_UID}\t" in status
        # files snapshots copy the host's layer, which a VM does not write to: refused
        with pytest.raises(ConflictError, match="does not support files-only snapshots"):
            await engine.snapshot(sid)
    finally:
        await engine.kill(sid)
    # nothing left: QEMU, its sockets and disk layer, the cgroups
    assert _qemu_of(sid) == b""
    assert not (_root() / sid).exists()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT}/{sid}"))
    assert (await engine.runtimes.get("microvm").status(sid)) is None


@pytest.mark.parametrize("clones", ["1", "0"], ids=["template-boot", "cold-boot"])
async def test_microvm_boot_failure_is_reported_and_cleaned_up(
    engine: Engine, microvm: str, monkeypatch: pytest.MonkeyPatch, clones: str
) -> None:
    monkeypatch.setenv("TARTARUS_MICROVM_BOOT_TIMEOUT", "0.5")
    monkeypatch.setenv("TARTARUS_MICROVM_CLONES", clones)
    # a plan of its own, so no template exists: the guest must boot, and cannot in 0.5 s
    resources = Resources(memory_mb=200)
    before = {s.id for s in engine.list()}
    t0 = time.monotonic()
    with pytest.raises(RuntimeUnavailableError, match=r"did not boot in 0\.5 s"):
        await engine.create(SandboxSpec(runtime=microvm, timeout=60, resources=resources))
    assert time.monotonic() - t0 < 60
    failed = [
        s
        for s in engine.list(states=[SandboxState.FAILED])
        if s.id not in before and "did not boot" in (s.reason or "")
    ]
    assert len(failed) == 1, failed
    templates = _root() / "templates"
    assert not list(templates.glob(".*")), "a failed template build left files"
    assert _qemu_of(failed[0].id) == b""
    assert not (_root() / failed[0].id).exists()
    assert await engine.runtimes.get("microvm").list_ids() == []


async def test_microvm_refuses_too_little_memory(engine: Engine, microvm: str) -> None:
    spec = SandboxSpec(runtime=microvm, resources=Resources(memory_mb=64))
    with pytest.raises(InvalidRequestError, match="at least 128 MiB"):
        await engine.create(spec)


async def test_a_new_engine_readopts_a_running_vm(microvm: str) -> None:
    first = Engine()
    await first.open()
    try:
        sb = await first.create(SandboxSpec(runtime=microvm, timeout=300))
        await first.agent(sb.id).write_file("kept.txt", b"kept")
    finally:
        await first.close(kill=False)  # the VM runs on; its channel ended with this engine
    second = Engine(adopt=True)
    await second.open()
    try:
        assert sb.id in second.running_ids()
        assert await _run(second, sb.id, "cat", "kept.txt") == (0, b"kept", b"")
        final = await second.kill(sb.id)
        assert final.state == SandboxState.KILLED
    finally:
        await second.close()
    assert _qemu_of(sb.id) == b""
    assert not (_root() / sb.id).exists()


async def test_memory_beyond_the_guest_stays_in_the_guest(engine: Engine, microvm: str) -> None:
    """The guest's memory is its limit: its own kernel refuses or OOM-kills a hog, and the
    VM, QEMU and the host go on (the engine suites' OOM case needs < 128 MiB)."""
    resources = Resources(memory_mb=160)
    sb = await engine.create(SandboxSpec(runtime=microvm, timeout=300, resources=resources))
    try:
        hog = "b = bytearray(400 * 1024 * 1024); print('survived')"
        rc, out, _ = await _run(engine, sb.id, "python3", "-c", hog)
        assert rc != 0 and b"survived" not in out
        assert await _run(engine, sb.id, "echo", "alive") == (0, b"alive\n", b"")
        assert engine.get(sb.id).state == SandboxState.RUNNING
    finally:
        await engine.kill(sb.id)


async def test_fork_bomb_stays_in_the_vm(engine: Engine, microvm: str) -> None:
    """A fork bomb exhausts the sandbox user's process cap inside the guest (its agent, the
    same user, with it): the host goes on and the sandbox still ends by its deadline."""
    bomb = ("sh", "-c", "(b(){ b | b & }; b) 2>/dev/null; while :; do :; done")
    resources = Resources(pids=64, cpu=0.5)
    sb = await engine.create(
        SandboxSpec(runtime=microvm, timeout=6, resources=resources, command=bomb)
    )
    await asyncio.sleep(2)
    start = time.monotonic()
    for _ in range(5):
        subprocess.run(["true"], check=True, timeout=10)
    assert time.monotonic() - start < 5, "the host struggled to start processes"
    final = await asyncio.wait_for(engine.wait(sb.id), 60)
    ended = (SandboxState.TIMED_OUT, SandboxState.KILLED, SandboxState.FAILED, SandboxState.EXITED)
    assert final.state in ended  # its deadline, or its agent starved of processes
    assert _qemu_of(sb.id) == b""
    assert not (_root() / sb.id).exists()
