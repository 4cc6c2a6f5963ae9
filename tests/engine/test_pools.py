"""Warm pools on real sandboxes: hand-out, refill, fit rules, removal, and restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tartarus.errors import AgentError, InvalidRequestError, NotFoundError
from tartarus.models import Resources, SandboxSpec, SandboxState
from tartarus.models.pool import PoolSpec, PoolStatus
from tartarus.node.engine import Engine
from tartarus.node.live import MainIO
from tartarus.node.pools import load_pool_file


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    """An engine filling pools, which are all removed again at the end (the state dir is
    shared by the whole test session)."""
    eng = Engine()
    await eng.open()
    try:
        await eng.start_pools()
        yield eng
    finally:
        for status in eng.pools.status():
            eng.pools.remove(status.template)
        await eng.close()


async def _until_ready(engine: Engine, template: str, ready: int) -> PoolStatus:
    for _ in range(300):
        status = engine.pools.get(template)
        if status.ready >= ready:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"pool never reached {ready} ready: {engine.pools.get(template)}")


async def test_pooled_sandbox_is_handed_out_once_and_refilled(engine: Engine, runtime: str) -> None:
    engine.pools.set(PoolSpec(template="python", min=2, runtime=runtime))
    await _until_ready(engine, "python", 2)
    assert engine.list(states=[SandboxState.RUNNING]) == []  # waiting sandboxes are nobody's

    spec = SandboxSpec(runtime=runtime, env={"GREETING": "hi"}, metadata={"job": "1"}, timeout=30)
    first = await engine.create(spec, tenant="acme")
    second = await engine.create(spec, tenant="acme")
    assert first.id != second.id
    for sandbox in (first, second):
        assert sandbox.pool is None and sandbox.tenant == "acme"
        assert "pool" in sandbox.timings_ms
        assert sandbox.spec.metadata == {"job": "1"}
        result = await engine.exec(sandbox.id, ["sh", "-c", "echo $GREETING"], tenant="acme")
        assert result.stdout == b"hi\n"
    listed = {s.id for s in engine.list(tenant="acme", states=[SandboxState.RUNNING])}
    assert listed == {first.id, second.id}

    status = await _until_ready(engine, "python", 2)  # refilled in the background
    assert (status.hits, status.in_use) == (2, 2)
    await engine.kill(first.id)
    await engine.kill(second.id)
    assert engine.pools.get("python").in_use == 0


async def test_the_deadline_starts_at_hand_out(engine: Engine) -> None:
    engine.pools.set(PoolSpec(template="python", min=1, runtime="crun"))
    await _until_ready(engine, "python", 1)
    sandbox = await engine.create(SandboxSpec(runtime="crun", timeout=1))
    assert "pool" in sandbox.timings_ms
    ended = await asyncio.wait_for(engine.wait(sandbox.id), timeout=15)
    assert ended.state == SandboxState.TIMED_OUT


async def test_a_main_command_runs_in_a_pooled_sandbox(engine: Engine) -> None:
    engine.pools.set(PoolSpec(template="python", min=1, runtime="crun"))
    await _until_ready(engine, "python", 1)
    out: list[bytes] = []
    io = MainIO(on_stdout=out.append)
    spec = SandboxSpec(runtime="crun", command=("sh", "-c", "echo main; exit 7"), timeout=30)
    sandbox = await engine.create(spec, io=io)
    assert "pool" in sandbox.timings_ms
    ended = await asyncio.wait_for(engine.wait(sandbox.id), timeout=30)
    assert (ended.state, ended.exit_code) == (SandboxState.EXITED, 7)
    assert b"".join(out) == b"main\n"


@pytest.mark.runtimes(
    "crun",
    "runc",
    "gvisor",
    why="microvm cannot resize a running VM (not resizable): it starts cold",
)
async def test_a_smaller_request_gets_a_pooled_sandbox_shrunk(engine: Engine, runtime: str) -> None:
    engine.pools.set(PoolSpec(template="python", min=1, runtime=runtime))
    await _until_ready(engine, "python", 1)
    small = Resources(memory_mb=128, cpu=0.5, pids=64, disk_mb=8)
    sandbox = await engine.create(SandboxSpec(runtime=runtime, resources=small, timeout=30))
    # gVisor cannot change a started sandbox's limits (runtimes/gvisor.py): it starts cold
    assert ("pool" in sandbox.timings_ms) == (runtime != "gvisor")
    assert sandbox.resources == small
    fill = "dd if=/dev/zero of=/tmp/fill bs=1M count=32 2>&1; echo rc=$?"
    result = await engine.exec(sandbox.id, ["sh", "-c", fill])
    assert b"No space left on device" in result.stdout and b"rc=1" in result.stdout
    memory = "python3 -c 'b = bytearray(200 * 1024 * 1024); print(len(b))'"
    try:
        result = await engine.exec(sandbox.id, ["sh", "-c", memory])
        assert result.exit_code != 0  # 200 MiB does not fit in 128
    except AgentError:  # gVisor: the OOM kill strikes the sentry, which ends the sandbox
        assert runtime == "gvisor"
        ended = await asyncio.wait_for(engine.wait(sandbox.id), timeout=30)
        assert ended.state == SandboxState.OOM_KILLED


async def test_requests_that_do_not_fit_start_cold(engine: Engine) -> None:
    engine.pools.set(PoolSpec(template="python", min=1, runtime="crun"))
    await _until_ready(engine, "python", 1)
    bigger = SandboxSpec(runtime="crun", resources=Resources(memory_mb=700), timeout=30)
    other_runtime = SandboxSpec(runtime="runc", timeout=30)
    other_workdir = SandboxSpec(runtime="crun", workdir="/srv/app", timeout=30)
    for spec in (bigger, other_runtime, other_workdir):
        sandbox = await engine.create(spec)
        assert "pool" not in sandbox.timings_ms, spec
        await engine.kill(sandbox.id)
    status = engine.pools.get("python")
    assert status.hits == 0 and status.misses == 3


async def test_removing_a_pool_kills_its_ready_sandboxes(engine: Engine) -> None:
    engine.pools.set(PoolSpec(template="python", min=2, runtime="crun"))
    await _until_ready(engine, "python", 2)
    waiting = list(engine.running_ids())
    engine.pools.remove("python")
    for sid in waiting:
        ended = await asyncio.wait_for(engine.wait(sid), timeout=15)
        assert ended.state == SandboxState.KILLED and ended.reason == "pool removed"
    with pytest.raises(NotFoundError):
        engine.pools.get("python")
    with pytest.raises(NotFoundError):
        engine.pools.remove("python")


async def test_pool_settings_are_checked(engine: Engine) -> None:
    with pytest.raises(NotFoundError):
        engine.pools.set(PoolSpec(template="no-such-template", min=1))
    with pytest.raises(InvalidRequestError):
        engine.pools.set(PoolSpec(template="python", min=1, runtime="no-such-runtime"))
    with pytest.raises(ValueError, match="max"):
        PoolSpec(template="python", min=3, max=2)


async def test_a_restarted_server_takes_back_its_pool(tmp_path: Path) -> None:
    first = Engine(adopt=True)
    await first.open()
    try:
        await first.start_pools()
        first.pools.set(PoolSpec(template="python", min=1, runtime="crun"))
        await _until_ready(first, "python", 1)
        waiting = first.running_ids()
    finally:
        await first.close(kill=False)
    second = Engine(adopt=True)
    await second.open()
    try:
        await second.start_pools()
        assert second.pools.get("python").ready == 1
        sandbox = await second.create(SandboxSpec(runtime="crun", timeout=30))
        assert sandbox.id in waiting and "pool" in sandbox.timings_ms
        second.pools.remove("python")
    finally:
        await second.close()


def test_pools_file(tmp_path: Path) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text("- {template: python, min: 2, max: 4}\n- {template: python-ds, min: 1}\n")
    specs = load_pool_file(path)
    assert [(s.template, s.min, s.ceiling) for s in specs] == [
        ("python", 2, 4),
        ("python-ds", 1, 1),
    ]
    path.write_text("- {template: python, min: -1}\n")
    with pytest.raises(InvalidRequestError, match="pools file"):
        load_pool_file(path)
    path.write_text("template: python\n")
    with pytest.raises(InvalidRequestError, match="expected a list"):
        load_pool_file(path)


async def test_phase_timings(engine: Engine) -> None:
    seen: list[str] = []
    engine.phase_listeners.append(lambda phase, ms: seen.append(phase))
    cold = await engine.create(SandboxSpec(runtime="crun", timeout=30))
    assert set(cold.timings_ms) >= {"image", "schedule", "queue", "overlay", "runtime", "create"}
    phases = [v for k, v in cold.timings_ms.items() if k != "create"]
    assert sum(phases) <= cold.timings_ms["create"] + 0.1  # durations, adding up to the total
    await engine.exec(cold.id, ["true"])
    for _ in range(100):
        timings = engine.get(cold.id).timings_ms
        if {"first_exec", "guest_ready"} <= set(timings):  # both are written after the fact
            break
        await asyncio.sleep(0.05)
    assert {"first_exec", "guest_ready"} <= set(timings)
    assert timings["first_exec"] >= timings["create"]
    assert {"runtime", "first_exec", "guest_ready"} <= set(seen)


async def test_a_pooled_sandbox_gets_the_request_environment_everywhere(engine: Engine) -> None:
    engine.pools.set(PoolSpec(template="python", min=1, runtime="crun"))
    await _until_ready(engine, "python", 1)
    sandbox = await engine.create(SandboxSpec(runtime="crun", env={"WHO": "me"}, timeout=30))
    assert "pool" in sandbox.timings_ms
    code = "import os; print(os.environ.get('WHO'))"
    agent = engine.agent(sandbox.id)
    assert (await agent.run_code(code)).stdout == "me\n"
    assert (await agent.run_code(code, context="second")).stdout == "me\n"
    result = await engine.exec(sandbox.id, ["python3", "-c", code])
    assert result.stdout == b"me\n"
