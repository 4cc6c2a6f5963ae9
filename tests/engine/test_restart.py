"""An engine that dies leaves nothing running: the next one reaps what it owned, or re-adopts
it (`adopt=True`), on every runtime (gVisor's agent relay is started again by the next one).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tartarus.models import SandboxSpec, SandboxState
from tartarus.node.engine import Engine
from tartarus.runtimes.microvm import MicroVMRuntime
from tests.conftest import TARTARUS


def _cli_with_running_sandbox(runtime: str) -> subprocess.Popen[bytes]:
    cli = subprocess.Popen(
        [TARTARUS, "run", "--runtime", runtime, "--", "sh", "-c", "echo up; sleep 120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert cli.stdout is not None
    assert cli.stdout.readline() == b"up\n"
    return cli


async def test_killed_cli_sandbox_is_reaped_by_the_next_engine(runtime: str) -> None:
    cli = _cli_with_running_sandbox(runtime)
    engine = Engine()
    await engine.open(reconcile=False)
    try:
        running = engine.sandboxes.list([SandboxState.RUNNING])
        assert running, "the CLI's sandbox should be recorded as running"
        sid = running[-1].id
        cli.send_signal(signal.SIGKILL)  # no chance to clean up
        cli.communicate()
        runtime_obj = engine.runtimes.get(runtime)
        assert await runtime_obj.status(sid) is not None, "the container outlives its CLI"

        from tartarus.node.reconcile import reconcile

        reaped = await reconcile(engine)
        assert sid in reaped
        record = engine.sandboxes.get(sid)
        assert record.state == SandboxState.FAILED
        assert record.reason and "engine exited" in record.reason
        assert await runtime_obj.status(sid) is None
        assert not (engine.settings.sandboxes_dir / sid).exists()
    finally:
        await engine.close()


async def test_live_owner_is_left_alone(runtime: str) -> None:
    cli = _cli_with_running_sandbox(runtime)
    try:
        engine = Engine()
        await engine.open()  # reconciles: the CLI still lives, so its sandbox stays
        try:
            running = engine.sandboxes.list([SandboxState.RUNNING])
            assert running
            assert await engine.runtimes.get(runtime).status(running[-1].id) is not None
        finally:
            await engine.close()
    finally:
        cli.send_signal(signal.SIGTERM)
        start = time.monotonic()
        _, err = cli.communicate(timeout=60)
        assert time.monotonic() - start < 30
        assert cli.returncode == 130, err


ENGINE_THAT_DIES = """
import asyncio, sys
from tartarus.models import SandboxSpec
from tartarus.node.engine import Engine

async def main():
    engine = Engine()
    await engine.open()
    command = tuple(sys.argv[3:])
    spec = SandboxSpec(runtime=sys.argv[1], timeout=float(sys.argv[2]), command=command)
    sandbox = await engine.create(spec)
    if command:
        async for entry in engine.logs(sandbox.id, follow=True):
            break  # the main command has started writing
    else:
        await engine.exec(sandbox.id, ["sh", "-c", "echo kept > /tmp/state"])
    print(sandbox.id, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _engine_process_with_idle_sandbox(
    runtime: str, timeout: float, *command: str
) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", ENGINE_THAT_DIES, runtime, str(timeout), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    sid = proc.stdout.readline().decode().strip()
    assert sid.startswith("sb-"), proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return proc, sid


async def test_idle_sandbox_is_readopted_with_its_state(runtime: str) -> None:
    _, sid = _engine_process_with_idle_sandbox(runtime, timeout=120)
    engine = Engine(adopt=True)
    await engine.open()
    try:
        assert sid in engine.running_ids()
        result = await engine.exec(sid, ["cat", "/tmp/state"])
        assert result.stdout == b"kept\n"
        final = await engine.kill(sid)
        assert final.state == SandboxState.KILLED
        assert await engine.runtimes.get(runtime).status(sid) is None
    finally:
        await engine.close()


async def test_readopted_sandbox_keeps_its_deadline(runtime: str) -> None:
    _, sid = _engine_process_with_idle_sandbox(runtime, timeout=4)
    engine = Engine(adopt=True)
    await engine.open()
    try:
        final = await asyncio.wait_for(engine.wait(sid), timeout=30)
        assert final.state == SandboxState.TIMED_OUT
    finally:
        await engine.close()


async def test_a_sandbox_past_its_deadline_is_reaped_as_timed_out(runtime: str) -> None:
    """Its deadline passed while no engine watched: the record says so, not "failed"."""
    _, sid = _engine_process_with_idle_sandbox(runtime, timeout=3)  # killed well before
    await asyncio.sleep(3.5)
    engine = Engine()  # reaps, re-adopts nothing
    await engine.open()
    try:
        final = engine.sandboxes.get(sid)
        assert final.state == SandboxState.TIMED_OUT, final
        assert final.reason == "wall-clock timeout reached (no engine)"
        assert await engine.runtimes.get(runtime).status(sid) is None
    finally:
        await engine.close()


@pytest.mark.runtimes("microvm", why="the race is a VM's: its guest may end it mid-reattach")
async def test_a_vm_that_ends_while_being_readopted_is_reaped(
    runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine opens all the same (it once crashed here), and the sandbox is reaped."""
    _, sid = _engine_process_with_idle_sandbox(runtime, timeout=120)

    async def port_closed(self: MicroVMRuntime, container_id: str, socket_path: Path) -> None:
        raise ConnectionError("the VM closed its agent port before the agent was ready")

    monkeypatch.setattr(MicroVMRuntime, "reattach", port_closed)
    engine = Engine(adopt=True)
    await engine.open()
    try:
        assert sid not in engine.running_ids()
        assert engine.sandboxes.get(sid).state == SandboxState.FAILED
        assert await engine.runtimes.get(runtime).status(sid) is None
    finally:
        await engine.close()


async def test_engine_closing_without_kill_leaves_sandbox_for_the_next(runtime: str) -> None:
    first = Engine(adopt=True)
    await first.open()
    sandbox = await first.create(SandboxSpec(runtime=runtime, timeout=120))
    await first.close(kill=False)
    assert await first.runtimes.get(runtime).status(sandbox.id) is not None
    # same process, so its owner looks alive: hand it over as a restarted server would
    first.sandboxes.set_owner(sandbox.id, "0:gone")
    second = Engine(adopt=True)
    await second.open()
    try:
        assert (await second.exec(sandbox.id, ["true"])).exit_code == 0
    finally:
        await second.close()
    assert second.sandboxes.get(sandbox.id).state == SandboxState.KILLED


async def test_main_command_survives_the_engine_and_is_reattached(runtime: str) -> None:
    script = "echo before; sleep 3; echo after; exit 7"
    _, sid = _engine_process_with_idle_sandbox(runtime, 120, "sh", "-c", script)
    engine = Engine(adopt=True)
    await engine.open()
    try:
        assert sid in engine.running_ids()
        final = await asyncio.wait_for(engine.wait(sid), timeout=30)
        assert (final.state, final.exit_code) == (SandboxState.EXITED, 7)
        output = b"".join(e.data for e in [e async for e in engine.logs(sid)])
        assert output == b"before\nafter\n"
    finally:
        await engine.close()
