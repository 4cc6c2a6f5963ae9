"""Hibernate and wake (Hypnos) through the engine, on real runtimes.

gVisor checkpoints with `runsc checkpoint`, runc with the CRIU that scripts/setup.sh builds.
Each is required to checkpoint when CI requires the runtime (TARTARUS_REQUIRE_RUNTIMES), or
when named in TARTARUS_REQUIRE_CHECKPOINT; elsewhere a runtime that cannot is skipped with the
probe's reason. crun (Debian's, without CRIU) must refuse with a 409-style CapabilityError.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tartarus.config import Settings
from tartarus.errors import CapabilityError, ConflictError, RuntimeUnavailableError
from tartarus.models import SandboxSpec, SandboxState
from tartarus.node import sleepfiles
from tartarus.node.engine import Engine
from tartarus.runtimes import cgroups, microvm_sleep
from tartarus.runtimes import runc as runc_module
from tartarus.runtimes.base import Capabilities
from tartarus.runtimes.bundle import CGROUP_PARENT
from tartarus.runtimes.oci_cli import OCIRuntime
from tartarus.runtimes.registry import RuntimeRegistry
from tests.conftest import REQUIRED
from tests.engine.helpers import tartarus

CHECKPOINTING = ("gvisor", "runc", "microvm")
REQUIRED_CHECKPOINT = (REQUIRED & set(CHECKPOINTING)) | {
    r.strip() for r in os.environ.get("TARTARUS_REQUIRE_CHECKPOINT", "").split(",") if r.strip()
}

# a loop in the background, counting in a file in /tmp
COUNTER = "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done' \
>/dev/null 2>&1 &"


def _checkpointing(name: str) -> str:
    probe = asyncio.run(RuntimeRegistry(Settings().state_dir).probe(name))
    if probe.works and probe.checkpoint:
        return name
    why = probe.checkpoint_error or probe.reason
    if name in REQUIRED_CHECKPOINT:
        pytest.fail(f"{name} cannot checkpoint here: {why}")
    pytest.skip(f"{name} cannot checkpoint here: {why}")


@pytest.fixture(params=CHECKPOINTING)
def rt(request: pytest.FixtureRequest) -> str:
    return _checkpointing(request.param)


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    eng = Engine(Settings(idle_hibernate_s=0))
    await eng.open()
    try:
        yield eng
    finally:
        await eng.close()


async def _sh(engine: Engine, sid: str, script: str) -> str:
    result = await engine.exec(sid, ["sh", "-c", script])
    assert result.exit_code == 0, result
    return result.stdout.decode()


async def _count(engine: Engine, sid: str) -> int:
    for _ in range(50):
        text = (await _sh(engine, sid, "cat /tmp/count 2>/dev/null || true")).strip()
        if text:
            return int(text)
        await asyncio.sleep(0.05)
    raise AssertionError("the counter never wrote /tmp/count")


def _gone(engine: Engine, sid: str) -> None:
    """Nothing of the sandbox's runs or is mounted: only its directory on disk is left."""
    assert cgroups.leftovers(CGROUP_PARENT, sid) == []
    assert not sleepfiles.Layer(engine.settings.sandboxes_dir / sid).mounted()


async def test_hibernate_and_wake_keep_memory_files_and_processes(engine: Engine, rt: str) -> None:
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=300))
    agent = engine.agent(sb.id)
    assert (await agent.run_code("x = 41")).error is None
    await _sh(engine, sb.id, f"echo kept > /tmp/file; {COUNTER}")
    before = await _count(engine, sb.id)

    slept = await engine.hibernate(sb.id)
    assert slept.state == SandboxState.HIBERNATED
    assert slept.checkpoint_bytes and slept.checkpoint_bytes > 0
    assert "hibernate" in slept.timings_ms
    directory = engine.settings.sandboxes_dir / sb.id
    assert slept.checkpoint_bytes == sleepfiles.disk_bytes(directory / "hibernated")
    assert await engine._live[sb.id].runtime.status(sb.id) is None  # no container left
    _gone(engine, sb.id)
    await asyncio.sleep(0.5)  # the counter is saved, not running: nothing moves meanwhile

    woken = await engine.wake(sb.id)
    assert woken.state == SandboxState.RUNNING
    assert woken.checkpoint_bytes is None and "wake" in woken.timings_ms
    assert not (directory / "hibernated").exists()
    assert (await engine.agent(sb.id).run_code("x + 1")).value == "42"
    assert await _sh(engine, sb.id, "cat /tmp/file") == "kept\n"
    after = await _count(engine, sb.id)
    assert after >= before  # it went on from where it was
    await asyncio.sleep(0.5)
    assert await _count(engine, sb.id) > after  # and goes on still
    events = [e["to"] for e in engine.events(sb.id)]
    assert events[-2:] == ["hibernated", "running"]

    # and again, from paused: a paused sandbox hibernates too and wakes running
    await engine.pause(sb.id)
    assert (await engine.hibernate(sb.id)).state == SandboxState.HIBERNATED
    assert (await engine.wake(sb.id)).state == SandboxState.RUNNING
    assert (await engine.agent(sb.id).run_code("x")).value == "41"


async def test_a_large_memory_survives(engine: Engine, rt: str) -> None:
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=300))
    code = "import hashlib, os\nblob = os.urandom(100 << 20)\nhashlib.sha256(blob).hexdigest()"
    digest = (await engine.agent(sb.id).run_code(code)).value
    slept = await engine.hibernate(sb.id)
    assert slept.checkpoint_bytes is not None and slept.checkpoint_bytes > 100 << 20
    await engine.wake(sb.id)
    check = await engine.agent(sb.id).run_code("hashlib.sha256(blob).hexdigest()")
    assert check.value == digest


async def test_any_use_wakes_it(engine: Engine, rt: str) -> None:
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=300))
    await _sh(engine, sb.id, "echo hi > /tmp/hi")
    await engine.hibernate(sb.id)
    assert await _sh(engine, sb.id, "cat /tmp/hi") == "hi\n"  # exec wakes it
    assert engine.get(sb.id).state == SandboxState.RUNNING
    await engine.hibernate(sb.id)
    assert await engine.agent(sb.id).read_file("/tmp/hi") == b"hi\n"  # and so do files
    assert engine.get(sb.id).state == SandboxState.RUNNING


async def test_idle_sandboxes_hibernate_by_themselves(rt: str) -> None:
    engine = Engine(Settings(idle_hibernate_s=1.0))
    await engine.open()
    try:
        sb = await engine.create(SandboxSpec(runtime=rt, timeout=300))
        # an exec in flight is not idleness, however long it takes
        result = await engine.exec(sb.id, ["sleep", "2.5"])
        assert result.exit_code == 0
        assert engine.get(sb.id).state == SandboxState.RUNNING
        deadline = time.monotonic() + 20
        while engine.get(sb.id).state != SandboxState.HIBERNATED:
            assert time.monotonic() < deadline, "an idle sandbox did not hibernate"
            await asyncio.sleep(0.1)
        assert await _sh(engine, sb.id, "echo awake") == "awake\n"
        # a sandbox with a main command never sleeps (the supervisor streams its output)
        main = await engine.create(SandboxSpec(runtime=rt, timeout=300, command=("sleep", "60")))
        await asyncio.sleep(2.5)
        assert engine.get(main.id).state == SandboxState.RUNNING
    finally:
        await engine.close()


async def test_kill_while_hibernated_leaves_nothing(engine: Engine, rt: str) -> None:
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=300))
    await _sh(engine, sb.id, "head -c 5000000 /dev/urandom > /tmp/blob")
    slept = await engine.hibernate(sb.id)
    directory = engine.settings.sandboxes_dir / sb.id
    assert slept.checkpoint_bytes and slept.checkpoint_bytes >= 5_000_000
    assert sleepfiles.disk_bytes(directory) >= slept.checkpoint_bytes
    ended = await engine.kill(sb.id)
    assert ended.state == SandboxState.KILLED
    assert not directory.exists()  # image and layer copy: the bytes are gone with it
    _gone(engine, sb.id)


async def test_the_timeout_does_not_count_while_hibernated(engine: Engine, rt: str) -> None:
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=4))
    slept = await engine.hibernate(sb.id)
    assert slept.expires_at is not None
    left = (slept.expires_at - datetime.now(UTC)).total_seconds()
    await asyncio.sleep(4.5)
    assert engine.get(sb.id).state == SandboxState.HIBERNATED  # not timed out
    woken = await engine.wake(sb.id)
    assert woken.expires_at is not None
    assert (woken.expires_at - datetime.now(UTC)).total_seconds() == pytest.approx(left, abs=1.5)
    ended = await engine.wait(sb.id)
    assert ended.state == SandboxState.TIMED_OUT  # it counts again once awake


async def test_what_cannot_hibernate_says_why(engine: Engine, rt: str) -> None:
    main = await engine.create(SandboxSpec(runtime=rt, timeout=300, command=("sleep", "60")))
    with pytest.raises(ConflictError, match="main command"):
        await engine.hibernate(main.id)
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=300))
    busy = asyncio.create_task(engine.exec(sb.id, ["sleep", "4"]))
    await asyncio.sleep(0.5)
    with pytest.raises(ConflictError, match="busy"):  # after waiting a little for it
        await engine.hibernate(sb.id)
    assert (await busy).exit_code == 0  # the refusal left it alone
    await engine.hibernate(sb.id)
    with pytest.raises(ConflictError, match="already hibernated"):
        await engine.hibernate(sb.id)
    with pytest.raises(ConflictError, match="wake it first"):
        await engine.pause(sb.id)
    await engine.wake(sb.id)
    with pytest.raises(ConflictError, match="not hibernated"):
        await engine.wake(sb.id)


async def test_crun_cannot_checkpoint(engine: Engine) -> None:
    sb = await engine.create(SandboxSpec(runtime="crun", timeout=300))
    with pytest.raises(CapabilityError, match="CRIU"):
        await engine.hibernate(sb.id)
    assert engine.get(sb.id).state == SandboxState.RUNNING
    assert not (await engine.runtimes.capabilities("crun")).checkpoint


async def test_a_hibernated_sandbox_stays_asleep_across_an_engine_restart(rt: str) -> None:
    first = Engine(Settings(idle_hibernate_s=0), adopt=True)
    await first.open()
    try:
        sb = await first.create(SandboxSpec(runtime=rt, timeout=300))
        await first.agent(sb.id).run_code("x = 41")
        await first.hibernate(sb.id)
    finally:
        await first.close(kill=False)
    second = Engine(Settings(idle_hibernate_s=0), adopt=True)
    await second.open()
    try:
        assert second.get(sb.id).state == SandboxState.HIBERNATED
        assert sb.id in second.running_ids()  # re-adopted, with nothing running
        _gone(second, sb.id)
        assert (await second.agent(sb.id).run_code("x + 1")).value == "42"  # wakes it
        assert second.get(sb.id).state == SandboxState.RUNNING
    finally:
        await second.close()


@pytest.fixture
def runc() -> str:
    return _checkpointing("runc")


async def test_a_later_engine_process_hibernates_through_the_layer_keeper(runc: str) -> None:
    # runc only: a gVisor sandbox's agent relay lives in its engine, so another process
    # cannot re-adopt it at all (runtimes/gvisor.py)
    rt = runc
    first = Engine(Settings(idle_hibernate_s=0), adopt=True)
    await first.open()
    try:
        sb = await first.create(SandboxSpec(runtime=rt, timeout=300))
        await _sh(first, sb.id, "echo kept > /tmp/file")
    finally:
        await first.close(kill=False)  # the CLI's way: leaves it running, with a keeper
    layer = sleepfiles.Layer(first.settings.sandboxes_dir / sb.id)
    keeper = layer.keeper()
    assert keeper is not None
    try:
        # the CLI is another process, with its own mount namespace: only the keeper's has
        # the layer
        done = tartarus("hibernate", sb.id)
        assert (done.returncode, done.stdout) == (0, f"{sb.id}\n".encode()), done.stderr
        assert layer.keeper() is None  # released: the keeper lets go of the namespace
        deadline = time.monotonic() + 15
        while os.path.exists(f"/proc/{keeper}") and not _zombie(keeper):
            assert time.monotonic() < deadline, "the keeper did not exit"
            await asyncio.sleep(0.2)
        shown = tartarus("exec", sb.id, "--", "cat", "/tmp/file")  # wakes it
        assert (shown.returncode, shown.stdout) == (0, b"kept\n"), shown.stderr
    finally:
        last = Engine(Settings(idle_hibernate_s=0), adopt=True)
        await last.open()
        await last.close()  # kills it


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


async def test_a_failed_checkpoint_leaves_it_running(
    engine: Engine, rt: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=300))
    assert (await engine.agent(sb.id).run_code("x = 41")).error is None
    runtime = engine._live[sb.id].runtime
    confirmed = await engine.runtimes.capabilities(rt)

    async def capabilities(name: str) -> Capabilities:  # as probed before it broke
        return confirmed

    monkeypatch.setattr(engine.runtimes, "capabilities", capabilities)
    if rt == "microvm":  # QEMU cannot write the state file: the migration fails
        real_save = microvm_sleep.save

        async def unwritable(qmp_sock: Path, state: Path) -> None:
            await real_save(qmp_sock, Path("/proc/no-such-dir/state"))

        monkeypatch.setattr(microvm_sleep, "save", unwritable)
    elif rt == "runc":  # a CRIU that fails (after the agent was parked)
        fake = tmp_path / "criu"
        fake.write_text("#!/bin/sh\necho 'Error (fake): broken on purpose' >&2\nexit 1\n")
        fake.chmod(0o755)
        monkeypatch.setattr(runc_module, "criu_path", lambda: fake)
    else:  # runsc refuses (after the relay stopped accepting)
        assert isinstance(runtime, OCIRuntime)
        real = runtime._run

        async def failing(*args: str, **kwargs: Any) -> tuple[int, str, str]:
            if "checkpoint" in args:
                raise RuntimeUnavailableError("gvisor checkpoint failed: on purpose")
            return await real(*args, **kwargs)

        monkeypatch.setattr(runtime, "_run", failing)
    with pytest.raises(RuntimeUnavailableError, match=r"checkpoint failed|saving the VM failed"):
        await engine.hibernate(sb.id)
    assert engine.get(sb.id).state == SandboxState.RUNNING
    assert not (engine.settings.sandboxes_dir / sb.id / "hibernated").exists()
    assert (await engine.agent(sb.id).run_code("x + 1")).value == "42"  # reachable as before
    assert await _sh(engine, sb.id, "echo fine") == "fine\n"


async def test_a_kill_during_a_hibernation_waits_for_it_and_leaves_nothing(
    engine: Engine, rt: str
) -> None:
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=300))
    await _sh(engine, sb.id, "true")
    sleeping = asyncio.create_task(engine.hibernate(sb.id))
    await asyncio.sleep(0.05)  # halfway through it
    ended = await engine.kill(sb.id)
    assert ended.state == SandboxState.KILLED and ended.reason == "killed by user"
    with contextlib.suppress(ConflictError):
        await sleeping
    assert not (engine.settings.sandboxes_dir / sb.id).exists()
    _gone(engine, sb.id)
    assert sb.id not in engine.running_ids()
