"""Erinyes on real sandboxes: each budget crossed for real, the action taken, the reason
recorded, an event and an audit record written; and the node's output cap under a flood."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import AsyncIterator

import pytest

from tartarus.config import Settings
from tartarus.errors import TartarusError
from tartarus.models import Enforcement, SandboxSpec, SandboxState
from tartarus.node.engine import Engine
from tartarus.store.audit import AuditLog
from tests.hostile.probe import exec_out, gvisor_or_skip

ALL = pytest.mark.parametrize("rt", ["crun", "runc", "gvisor"])
BUSY = "while True: pass"


async def _ended(engine: Engine, sid: str, timeout: float = 20) -> str | None:
    sb = await asyncio.wait_for(engine.wait(sid), timeout)
    assert sb.state == SandboxState.KILLED, sb
    return sb.reason


def _recorded(engine: Engine, sid: str, kind: str) -> dict[str, object]:
    shown = [e for e in engine.events(sid) if e["kind"] == kind]  # what `inspect` shows
    assert len(shown) == 1 and shown[0]["data"]["budget"] in shown[0]["reason"], shown
    records = AuditLog(engine.db).list(sandbox_id=sid, kind=kind)
    assert len(records) == 1 and records[0].actor == "erinyes"
    assert AuditLog(engine.db).verify() is None
    data: dict[str, object] = records[0].data
    return data


async def _create(engine: Engine, rt: str, **limits: object) -> str:
    await gvisor_or_skip(rt)
    spec = SandboxSpec(runtime=rt, timeout=60, enforcement=Enforcement.model_validate(limits))
    return (await engine.create(spec)).id


def _background(engine: Engine, sid: str, *argv: str) -> asyncio.Task[str]:
    return asyncio.create_task(exec_out(engine, sid, *argv, check=False))


async def _stop(task: asyncio.Task[str]) -> None:
    """Cancel and collect: its connection died with the sandbox, which is no news here."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, TartarusError):
        await task


@ALL
async def test_cpu_time_kill(engine: Engine, rt: str) -> None:
    sid = await _create(engine, rt, cpu_seconds=1.0)
    busy = _background(engine, sid, "python3", "-c", BUSY)
    assert await _ended(engine, sid) == "killed: cpu-time"
    await _stop(busy)
    data = _recorded(engine, sid, "enforcement.kill")
    assert data["budget"] == "cpu-time" and int(str(data["used"])) > 1e9


@ALL
async def test_cpu_time_throttle(engine: Engine, rt: str) -> None:
    sid = await _create(engine, rt, cpu_seconds=0.5, action="throttle")
    busy = _background(engine, sid, "python3", "-c", BUSY)
    try:
        if rt == "gvisor":  # runsc cannot change a running sandbox's quota: killed, and why
            reason = await _ended(engine, sid)
            assert (
                reason is not None
                and reason.startswith("killed: cpu-time (")
                and "gvisor" in reason
            )
            return
        for _ in range(100):
            if engine.get(sid).resources.cpu < 1:
                break
            await asyncio.sleep(0.1)
        assert engine.get(sid).resources.cpu == pytest.approx(0.1)
        _recorded(engine, sid, "enforcement.throttle")
        assert await exec_out(engine, sid, "echo", "alive") == "alive\n"  # still running
    finally:
        await _stop(busy)
        await engine.kill(sid)


@ALL
async def test_memory_soft_mark(engine: Engine, rt: str) -> None:
    sid = await _create(engine, rt, memory_mb=64)
    hog = "import time\nx = bytearray(150 * 2**20)\nx[::4096] = b'1' * len(x[::4096])\n"
    hog += "time.sleep(60)"
    task = _background(engine, sid, "python3", "-c", hog)
    assert await _ended(engine, sid) == "killed: memory"
    await _stop(task)
    _recorded(engine, sid, "enforcement.kill")


@ALL
async def test_disk_budget(engine: Engine, rt: str) -> None:
    sid = await _create(engine, rt, disk_mb=8)
    await exec_out(engine, sid, "dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=16")
    assert await _ended(engine, sid) == "killed: disk"
    _recorded(engine, sid, "enforcement.kill")


@ALL
async def test_output_budget_kill(engine: Engine, rt: str) -> None:
    sid = await _create(engine, rt, output_bytes=100_000)
    out = await exec_out(engine, sid, "head", "-c", "300000", "/dev/zero", check=False)
    assert len(out) < 100_200 and out.endswith("[tartarus: output truncated after 100000 bytes]\n")
    assert await _ended(engine, sid) == "killed: output-limit"
    _recorded(engine, sid, "enforcement.kill")


async def test_output_budget_throttle(engine: Engine) -> None:
    sid = await _create(engine, "crun", output_bytes=10_000, action="throttle")
    try:
        await exec_out(engine, sid, "head", "-c", "20000", "/dev/zero")
        await asyncio.sleep(1.5)  # a tick
        _recorded(engine, sid, "enforcement.throttle")
        assert await exec_out(engine, sid, "echo", "more") == ""  # no more output accepted
        assert engine.get(sid).state == SandboxState.RUNNING
    finally:
        await engine.kill(sid)


@pytest.mark.parametrize("rt", ["crun", "gvisor"])
async def test_hibernate_action(engine: Engine, rt: str) -> None:
    """Hibernated where the runtime checkpoints (gVisor), else killed with the reason."""
    sid = await _create(engine, rt, cpu_seconds=0.5, action="hibernate")
    await exec_out(engine, sid, "sh", "-c", f"python3 -c '{BUSY}' >/dev/null 2>&1 &")
    if rt == "crun":
        reason = await _ended(engine, sid)
        assert reason is not None and reason.startswith("killed: cpu-time (hibernate impossible")
        return
    try:
        for _ in range(150):
            if engine.get(sid).state == SandboxState.HIBERNATED:
                break
            await asyncio.sleep(0.1)
        assert engine.get(sid).state == SandboxState.HIBERNATED
        _recorded(engine, sid, "enforcement.hibernate")
    finally:
        await engine.kill(sid)


@pytest.fixture
async def capped() -> AsyncIterator[Engine]:
    eng = Engine(Settings(max_output_bytes=1_000_000))
    await eng.open()
    try:
        yield eng
    finally:
        await eng.close()


async def test_output_flood_is_capped(capped: Engine) -> None:
    """A `yes` flood as main command: its log stops at the cap with a marker, the engine's
    memory stays put, and another sandbox answers an exec quickly meanwhile."""
    flood = await capped.create(SandboxSpec(runtime="crun", timeout=60, command=("yes",)))
    other = await capped.create(SandboxSpec(runtime="crun", timeout=60))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        await asyncio.sleep(3)
        rounds = []
        for _ in range(5):
            t = time.perf_counter()
            assert await exec_out(capped, other.id, "echo", "hi") == "hi\n"
            rounds.append(time.perf_counter() - t)
        assert sorted(rounds)[2] < 1.0, rounds  # median round trip stays interactive
        entries = [e async for e in capped.logs(flood.id)]
        logged = b"".join(e.data for e in entries)
        assert logged.endswith(b"[tartarus: output truncated after 1000000 bytes]\n")
        assert len(logged) < 1_000_100
        assert capped.get(flood.id).state == SandboxState.RUNNING  # capped, not killed
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        assert grown_kib < 50_000, grown_kib
    finally:
        await capped.kill(flood.id)
        await capped.kill(other.id)


NET_FLOOD = r"""
import socket, struct
gw = None
for line in open("/proc/net/route").read().splitlines()[1:]:
    f = line.split()
    if f[1] == "00000000":
        gw = socket.inet_ntoa(struct.pack("<L", int(f[2], 16)))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(400):  # to the host end of its own veth (ours), discard port: counted, dropped
    s.sendto(b"x" * 1000, (gw, 9))
print(gw)
"""


@pytest.mark.parametrize("rt", ["crun", "gvisor"])
async def test_network_budget(engine: Engine, rt: str) -> None:
    """Bytes over the sandbox's veth (Styx's counters) past the budget: killed."""
    await gvisor_or_skip(rt)
    limits = Enforcement(network_bytes=100_000)
    spec = SandboxSpec(runtime=rt, timeout=60, network="allowlist", enforcement=limits)
    sid = (await engine.create(spec)).id
    await exec_out(engine, sid, "python3", "-c", NET_FLOOD)
    assert await _ended(engine, sid) == "killed: network"
    assert int(str(_recorded(engine, sid, "enforcement.kill")["used"])) > 100_000


async def test_capped_main_command_still_ends(capped: Engine) -> None:
    """Past the cap the engine stops reading the main command, yet sees its exit."""
    cmd = ("sh", "-c", "head -c 5000000 /dev/zero; echo late; exit 7")
    sb = await capped.create(SandboxSpec(runtime="crun", timeout=60, command=cmd))
    ended = await asyncio.wait_for(capped.wait(sb.id), 30)
    assert (ended.state, ended.exit_code) == (SandboxState.EXITED, 7)
    logged = b"".join([e.data async for e in capped.logs(sb.id)])
    assert logged.endswith(b"[tartarus: output truncated after 1000000 bytes]\n")
    assert b"late" not in logged
