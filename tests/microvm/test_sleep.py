"""microvm pause/resume, hibernate/wake and memory snapshots, through the engine."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pytest

from tartarus.errors import ConflictError, RuntimeUnavailableError
from tartarus.models import SandboxSpec, SandboxState
from tartarus.node import sleepfiles
from tartarus.node.engine import Engine
from tartarus.runtimes import microvm_qemu
from tests.microvm.test_microvm import _qemu_of, _root, _run

pytestmark = pytest.mark.slow


async def _guest_time(engine: Engine, sid: str) -> float:
    _, out, _ = await _run(engine, sid, "python3", "-c", "import time; print(time.time())")
    return float(out)


async def test_pause_keeps_memory_and_resume_sets_the_clock(engine: Engine, microvm: str) -> None:
    sb = await engine.create(SandboxSpec(runtime=microvm, timeout=300))
    sid = sb.id
    try:
        assert (await engine.agent(sid).run_code("x = 41")).error is None
        paused = await engine.pause(sid)
        assert paused.state == SandboxState.PAUSED
        assert await engine.runtimes.get(microvm).status(sid) == "paused"
        with pytest.raises(ConflictError, match="already paused"):
            await engine.pause(sid)
        await asyncio.sleep(3)  # a stopped VM's clock stands still
        await engine.resume(sid)
        assert (await engine.agent(sid).run_code("x + 1")).value == "42"
        assert abs(await _guest_time(engine, sid) - time.time()) < 1.5
    finally:
        await engine.kill(sid)
    assert _qemu_of(sid) == b""


async def test_hibernate_and_wake_keep_variables_files_and_processes(
    engine: Engine, microvm: str
) -> None:
    sb = await engine.create(SandboxSpec(runtime=microvm, timeout=300))
    sid = sb.id
    try:
        agent = engine.agent(sid)
        assert (await agent.run_code("import random; x = 41; r = random.random()")).error is None
        await agent.write_file("/tmp/kept.txt", b"kept across")
        loop = "nohup sh -c 'while :; do date +%s >> /tmp/ticks; sleep 1; done' >/dev/null 2>&1 &"
        assert (await _run(engine, sid, "sh", "-c", loop))[0] == 0
        await asyncio.sleep(2)
        slept = await engine.hibernate(sid)
        assert slept.state == SandboxState.HIBERNATED
        assert (slept.checkpoint_bytes or 0) > 1 << 20  # the guest's RAM is in the image
        assert _qemu_of(sid) == b""  # its memory and CPU are free
        assert not (_root() / sid).exists()
        await asyncio.sleep(2)
        # any use wakes it transparently
        assert (await agent.run_code("x + 1")).value == "42"
        assert engine.get(sid).state == SandboxState.RUNNING
        assert (await agent.run_code("r == r")).value == "True"
        assert await agent.read_file("/tmp/kept.txt") == b"kept across"
        assert abs(await _guest_time(engine, sid) - time.time()) < 1.5
        _, before, _ = await _run(engine, sid, "wc", "-l", "/tmp/ticks")
        await asyncio.sleep(2.5)
        _, after, _ = await _run(engine, sid, "wc", "-l", "/tmp/ticks")
        assert int(after.split()[0]) > int(before.split()[0])  # the loop goes on
        assert engine.get(sid).timings_ms.get("wake", 0) > 0
    finally:
        await engine.kill(sid)
    assert _qemu_of(sid) == b""
    assert not (_root() / sid).exists()


async def test_memory_snapshot_forks_three_independent_vms(engine: Engine, microvm: str) -> None:
    sb = await engine.create(SandboxSpec(runtime=microvm, timeout=300))
    sids = [sb.id]
    try:
        agent = engine.agent(sb.id)
        assert (await agent.run_code("x = 'from the source'")).error is None
        await agent.write_file("data.txt", b"snapshot data")
        with pytest.raises(ConflictError, match="files-only snapshots"):
            await engine.snapshot(sb.id)
        snap = await engine.snapshot(sb.id, memory=True)
        assert snap.memory and snap.runtime == "microvm"
        assert engine.get(sb.id).state == SandboxState.RUNNING  # woken after the copy
        forks = await asyncio.gather(
            *(engine.create(SandboxSpec(snapshot=snap.id, timeout=300)) for _ in range(3))
        )
        sids += [f.id for f in forks]
        seen = set()
        for i, fork in enumerate(forks):
            assert fork.runtime == "microvm"
            fa = engine.agent(fork.id)
            assert (await fa.run_code("x")).value == "'from the source'"
            assert await fa.read_file("data.txt") == b"snapshot data"
            await fa.write_file("data.txt", f"fork {i}".encode())
            _, rnd, _ = await _run(
                engine, fork.id, "python3", "-c", "import os; print(os.urandom(8).hex())"
            )
            seen.add(rnd)
        assert len(seen) == 3  # no two forks share a random stream
        for i, fork in enumerate(forks):
            assert await engine.agent(fork.id).read_file("data.txt") == f"fork {i}".encode()
        assert await agent.read_file("data.txt") == b"snapshot data"
    finally:
        for sid in sids:
            await engine.kill(sid)
    for sid in sids:
        assert _qemu_of(sid) == b""


async def test_a_wake_that_fails_after_the_guest_ran_can_be_tried_again(
    engine: Engine, microvm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guest writes to its disk from the moment it goes on: a failed wake must not
    leave that disk in the image, or the next wake pairs the memory with a newer disk."""
    sb = await engine.create(SandboxSpec(runtime=microvm, timeout=300))
    sid = sb.id
    try:
        agent = engine.agent(sid)
        await agent.write_file("/tmp/kept.txt", b"as saved")
        assert (await agent.run_code("x = 41")).error is None
        await engine.hibernate(sid)
        saved = sleepfiles.hibernated_dir(engine.settings.sandboxes_dir / sid) / "image"
        digest = hashlib.sha256((saved / "rw.ext4").read_bytes()).hexdigest()
        real = microvm_qemu.wait_ready

        async def ready_then_fail(*args: Any, **kwargs: Any) -> None:
            await real(*args, **kwargs)
            with open(_root() / sid / "rw.ext4", "r+b") as disk:  # what a guest may write
                disk.seek(1 << 20)
                disk.write(b"written after the wake began")
            raise RuntimeUnavailableError("injected after the guest ran")

        monkeypatch.setattr(microvm_qemu, "wait_ready", ready_then_fail)
        with pytest.raises(RuntimeUnavailableError, match="injected"):
            await engine.wake(sid)
        assert engine.get(sid).state == SandboxState.HIBERNATED
        assert _qemu_of(sid) == b""
        assert hashlib.sha256((saved / "rw.ext4").read_bytes()).hexdigest() == digest
        monkeypatch.undo()
        await engine.wake(sid)
        assert (await agent.run_code("x + 1")).value == "42"
        assert await agent.read_file("/tmp/kept.txt") == b"as saved"
    finally:
        await engine.kill(sid)
    assert _qemu_of(sid) == b""
