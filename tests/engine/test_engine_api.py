"""The engine's facade for the API: tenants, events, deadlines and output logs."""

from __future__ import annotations

import asyncio
import time

import pytest

from tartarus.errors import ConflictError, InvalidRequestError, NotFoundError
from tartarus.models import SandboxSpec, SandboxState
from tartarus.node.engine import Engine


async def test_tenants_do_not_see_each_other(engine: Engine, runtime: str) -> None:
    sandbox = await engine.create(SandboxSpec(runtime=runtime, timeout=60), tenant="a")
    assert engine.get(sandbox.id, tenant="a").id == sandbox.id
    with pytest.raises(NotFoundError):
        engine.get(sandbox.id, tenant="b")
    with pytest.raises(NotFoundError):
        await engine.exec(sandbox.id, ["true"], tenant="b")
    with pytest.raises(NotFoundError):
        await engine.kill(sandbox.id, tenant="b")
    with pytest.raises(NotFoundError):
        engine.agent(sandbox.id, tenant="b")
    assert sandbox.id in [s.id for s in engine.list(tenant="a")]
    assert sandbox.id not in [s.id for s in engine.list(tenant="b")]
    await engine.kill(sandbox.id, tenant="a")
    with pytest.raises(ConflictError):
        await engine.exec(sandbox.id, ["true"], tenant="a")


async def test_commands_do_not_inherit_the_agents_oom_protection(
    engine: Engine, runtime: str
) -> None:
    # in a VM the agent is shielded from the guest's OOM killer; what it starts must not be
    # (elsewhere it has no shield, and its commands start by vfork, without a preexec step)
    sandbox = await engine.create(SandboxSpec(runtime=runtime, timeout=60))
    try:
        result = await engine.exec(sandbox.id, ["cat", "/proc/self/oom_score_adj"])
        assert (result.exit_code, result.stdout) == (0, b"0\n"), result.stderr
    finally:
        await engine.kill(sandbox.id)


async def test_events_record_each_transition(engine: Engine, runtime: str) -> None:
    sandbox = await engine.create(SandboxSpec(runtime=runtime, timeout=60))
    await engine.kill(sandbox.id)
    steps = [(e["from"], e["to"]) for e in engine.events(sandbox.id)]
    assert steps == [
        (None, "pending"),
        ("pending", "starting"),
        ("starting", "running"),
        ("running", "killed"),
    ]
    assert engine.events(sandbox.id)[-1]["reason"] == "killed by user"


async def test_set_timeout_extends_and_shortens(engine: Engine, runtime: str) -> None:
    sandbox = await engine.create(SandboxSpec(runtime=runtime, timeout=3))
    await engine.set_timeout(sandbox.id, 60)
    await asyncio.sleep(4)
    assert engine.get(sandbox.id).state == SandboxState.RUNNING  # past the first deadline
    start = time.monotonic()
    await engine.set_timeout(sandbox.id, 1)
    final = await asyncio.wait_for(engine.wait(sandbox.id), timeout=20)
    assert final.state == SandboxState.TIMED_OUT
    assert time.monotonic() - start < 10
    with pytest.raises(InvalidRequestError):
        await engine.set_timeout(sandbox.id, 0)


async def test_logs_of_the_main_command(engine: Engine, runtime: str) -> None:
    spec = SandboxSpec(
        runtime=runtime,
        command=("sh", "-c", "echo one; echo two >&2; sleep 2; echo three"),
        timeout=60,
    )
    sandbox = await engine.create(spec)
    followed = []
    async for entry in engine.logs(sandbox.id, follow=True):
        followed.append((entry.stream, entry.data))
    assert b"".join(d for s, d in followed if s == "stdout") == b"one\nthree\n"
    assert any(s == "stderr" and d == b"two\n" for s, d in followed)
    assert engine.get(sandbox.id).state == SandboxState.EXITED
    again = [e async for e in engine.logs(sandbox.id)]
    assert [e.data for e in again] == [d for _, d in followed]
    resumed = [e async for e in engine.logs(sandbox.id, after=again[0].seq)]
    assert resumed == again[1:]


async def test_create_travels_through_the_job_queue(engine: Engine, runtime: str) -> None:
    sandbox = await engine.create(SandboxSpec(runtime=runtime, timeout=60))
    [job] = engine.jobs.for_sandbox(sandbox.id)
    assert (job.kind, job.state, job.node, job.attempts) == ("create", "done", engine.owner, 1)
    assert "queue" in engine.get(sandbox.id).timings_ms
    await engine.kill(sandbox.id)


async def test_failed_create_fails_its_job(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError):
        await engine.create(SandboxSpec(runtime="crun", workdir="/etc/passwd", timeout=60))
    failed = engine.list(states=[SandboxState.FAILED])[-1]
    [job] = engine.jobs.for_sandbox(failed.id)
    assert job.state == "failed" and job.error
