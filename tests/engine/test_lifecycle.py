"""Pause/resume and graceful termination on every runtime, through the engine.

Each test runs real sandboxes on crun, runc and gVisor: a paused counter stops and resumes
with its memory, a paused sandbox's timeout stops counting, a kill of a paused sandbox
leaves nothing behind, and terminate gives SIGTERM handlers their grace (or kills them).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tartarus.config import Settings
from tartarus.errors import CapabilityError, ConflictError, InvalidRequestError
from tartarus.models import SandboxSpec, SandboxState
from tartarus.node import snapshots
from tartarus.node.engine import AGENT_GRACE_S, Engine
from tartarus.runtimes import cgroups
from tartarus.runtimes.bundle import CGROUP_PARENT
from tartarus.runtimes.registry import RuntimeRegistry
from tests.conftest import ALL_RUNTIMES, working
from tests.engine.helpers import tartarus

# prints a counter that lives in memory, and whether 8 MiB of random bytes still hash the same
COUNTER = """
import hashlib, os, time
data = os.urandom(8 << 20)
digest = hashlib.sha256(data).hexdigest()
i = 0
while True:
    i += 1
    print(i, hashlib.sha256(data).hexdigest() == digest, flush=True)
    time.sleep(0.05)
"""

# on SIGTERM: take a while, write a file, check it, say so and exit 0
TRAPS_TERM = """
import os, signal, sys, time
def bye(signum, frame):
    time.sleep(0.5)
    with open("/tmp/out", "wb") as f:
        f.write(b"x" * (1 << 20))
        f.flush()
        os.fsync(f.fileno())
    print("wrote", os.path.getsize("/tmp/out"), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print("ready", flush=True)
while True:
    time.sleep(1)
"""

IGNORES_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture(params=ALL_RUNTIMES)
def rt(request: pytest.FixtureRequest) -> str:
    return working(request.param)  # a required one that does not work failed the session


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    eng = Engine()
    await eng.open()
    try:
        yield eng
    finally:
        await eng.close()


async def _lines(engine: Engine, sid: str) -> list[str]:
    out = b"".join([e.data async for e in engine.logs(sid) if e.stream == "stdout"])
    return out.decode().splitlines()


async def _until(engine: Engine, sid: str, predicate: str, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = await _lines(engine, sid)
        if any(predicate in line for line in lines):
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {predicate!r} in the output: {await _lines(engine, sid)}")


async def test_probe_confirms_pause(rt: str) -> None:
    registry = RuntimeRegistry(Settings().state_dir)
    assert (await registry.capabilities(rt)).pause
    reports = {r.name: r for r in await registry.report()}
    assert reports[rt].probe.pause and "pause" not in reports[rt].missing
    # crun's Debian build has no CRIU; runc uses the CRIU setup.sh builds; runsc has its own
    assert reports[rt].capabilities.checkpoint == (rt != "crun")
    assert ("checkpoint" in reports[rt].missing) == (rt == "crun")


async def test_pause_stops_the_processes_and_resume_continues_them(engine: Engine, rt: str) -> None:
    sb = await engine.create(
        SandboxSpec(runtime=rt, timeout=120, command=("python3", "-c", COUNTER))
    )
    try:
        await _until(engine, sb.id, "3 True")
        paused = await engine.pause(sb.id)
        assert paused.state == SandboxState.PAUSED and paused.paused_at is not None
        await asyncio.sleep(0.3)  # output already in flight is still logged
        frozen = await _lines(engine, sb.id)
        await asyncio.sleep(1.5)  # longer than the container watch interval
        assert await _lines(engine, sb.id) == frozen, "the counter advanced while paused"
        assert engine.get(sb.id).state == SandboxState.PAUSED  # not mistaken for stopped
        last = int(frozen[-1].split()[0])
        resumed = await engine.resume(sb.id)
        assert resumed.state == SandboxState.RUNNING and resumed.paused_at is None
        lines = await _until(engine, sb.id, f"{last + 3} ")
        after = lines[len(frozen) :]
        # the count goes on from where it stopped: the process and its memory are intact
        assert after[0] == f"{last + 1} True", after
        assert all(line.endswith(" True") for line in after)
    finally:
        await engine.kill(sb.id)


async def test_paused_sandbox_does_not_time_out(engine: Engine, rt: str) -> None:
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=2))
    paused = await engine.pause(sb.id)
    assert paused.expires_at is not None and paused.paused_at is not None
    left = (paused.expires_at - paused.paused_at).total_seconds()
    await asyncio.sleep(3)
    assert engine.get(sb.id).state == SandboxState.PAUSED
    resumed = await engine.resume(sb.id)
    assert resumed.expires_at is not None
    moved = (resumed.expires_at - datetime.now(UTC)).total_seconds()
    assert left - 1.5 < moved <= left, (left, moved)  # not 3 s less: paused time is not counted
    assert (await engine.exec(sb.id, ["true"])).exit_code == 0
    started = time.monotonic()
    final = await asyncio.wait_for(engine.wait(sb.id), 30)
    assert final.state == SandboxState.TIMED_OUT
    assert time.monotonic() - started < left + 3


async def test_guest_backstop_deadline_does_not_fire_at_thaw(engine: Engine, rt: str) -> None:
    # the guest agent's own deadline (timeout + AGENT_GRACE_S) passes while it is frozen:
    # pause switches it off and resume sets it again, else it would kill all at the thaw
    # the short timeout is set just before the pause: counted from the create's end, a slow
    # start (a VM under TCG, a loaded machine) left too little of it for the exec after resume
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=60))
    await engine.set_timeout(sb.id, 2)
    await engine.pause(sb.id)
    await asyncio.sleep(2 + AGENT_GRACE_S + 0.5)
    await engine.resume(sb.id)
    await asyncio.sleep(0.3)  # the agent's loop wakes at least every second; it has looked
    assert (await engine.exec(sb.id, ["echo", "alive"])).stdout == b"alive\n"
    final = await asyncio.wait_for(engine.wait(sb.id), 30)
    assert final.state == SandboxState.TIMED_OUT


async def test_paused_sandbox_refuses_work_with_a_clear_conflict(engine: Engine, rt: str) -> None:
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=60))
    try:
        await engine.pause(sb.id)
        resume_first = f"sandbox {sb.id} is paused; resume it first"
        with pytest.raises(ConflictError, match=resume_first):
            await engine.exec(sb.id, ["true"])
        with pytest.raises(ConflictError, match=resume_first):
            engine.agent(sb.id)  # files and run_code
        with pytest.raises(ConflictError, match=resume_first):
            await engine.set_timeout(sb.id, 60)
        with pytest.raises(ConflictError, match="already paused"):
            await engine.pause(sb.id)
        await engine.resume(sb.id)
        with pytest.raises(ConflictError, match="is running, not paused"):
            await engine.resume(sb.id)
        assert (await engine.exec(sb.id, ["echo", "back"])).stdout == b"back\n"
    finally:
        await engine.kill(sb.id)
    with pytest.raises(ConflictError, match="killed, not running"):
        await engine.pause(sb.id)
    with pytest.raises(ConflictError, match="killed, not running"):
        await engine.resume(sb.id)


async def test_kill_of_a_paused_sandbox_leaves_nothing(engine: Engine, rt: str) -> None:
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=60))
    await engine.exec(sb.id, ["sh", "-c", "sleep 300 >/dev/null 2>&1 &"])
    await engine.pause(sb.id)
    started = time.monotonic()
    final = await engine.kill(sb.id)
    assert time.monotonic() - started < 5
    assert (final.state, final.reason) == (SandboxState.KILLED, "killed by user")
    runtime = engine.runtimes.get(rt)
    assert await runtime.status(sb.id) is None
    assert cgroups.leftovers(CGROUP_PARENT, sb.id) == []
    assert cgroups.pids(CGROUP_PARENT, sb.id) == set()
    ps = subprocess.run(["pgrep", "-f", sb.id], capture_output=True, check=False)
    assert ps.stdout == b""
    mounts = Path("/proc/self/mountinfo").read_text()  # the engine's namespace: this thread
    assert sb.id not in mounts
    assert not (engine.settings.sandboxes_dir / sb.id).exists()


async def test_terminate_lets_a_sigterm_handler_finish(engine: Engine, rt: str) -> None:
    sb = await engine.create(
        SandboxSpec(runtime=rt, timeout=120, command=("python3", "-c", TRAPS_TERM))
    )
    await _until(engine, sb.id, "ready")
    started = time.monotonic()
    final = await engine.terminate(sb.id, grace=10)
    took = time.monotonic() - started
    assert 0.5 <= took < 10
    assert await _lines(engine, sb.id) == ["ready", f"wrote {1 << 20}"]
    assert (final.state, final.exit_code) == (SandboxState.EXITED, 0)
    assert final.reason == "terminated: ended within grace"


async def test_terminate_with_checkpoint_snapshots_first(engine: Engine, rt: str) -> None:
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=120))
    await engine.exec(sb.id, ["sh", "-c", "echo kept > ~/state"])
    final = await engine.terminate(sb.id, grace=5, checkpoint=True)
    assert final.state == SandboxState.KILLED and final.reason is not None
    ended, _, saved = final.reason.partition("; saved as snapshot ")
    assert ended == "terminated: ended within grace" and saved.startswith("snap-")
    try:
        snap = engine.snapshots.get(saved)
        assert (snap.source, snap.runtime) == (sb.id, rt)
        clone = await engine.create(SandboxSpec(runtime=rt, timeout=60, snapshot=saved))
        try:
            assert (await engine.exec(clone.id, ["cat", "/home/user/state"])).stdout == b"kept\n"
        finally:
            await engine.kill(clone.id)
    finally:
        snapshots.delete(engine, saved)
    with pytest.raises(ConflictError, match="nothing left to checkpoint"):
        await engine.terminate(sb.id, checkpoint=True)
    assert (await engine.terminate(sb.id)).reason == final.reason  # without: as it ended


async def test_terminate_kills_what_ignores_sigterm_after_the_grace(
    engine: Engine, rt: str
) -> None:
    sb = await engine.create(
        SandboxSpec(runtime=rt, timeout=120, command=("python3", "-c", IGNORES_TERM))
    )
    await _until(engine, sb.id, "ready")
    started = time.monotonic()
    final = await engine.terminate(sb.id, grace=1.5)
    assert 1.5 <= time.monotonic() - started < 6
    assert (final.state, final.exit_code) == (SandboxState.KILLED, None)
    assert final.reason == "terminated: killed after the 1.5 s grace period"
    assert cgroups.leftovers(CGROUP_PARENT, sb.id) == []


async def test_terminate_without_main_waits_for_every_process(engine: Engine, rt: str) -> None:
    # no main command: what is waited for is every process the guest started
    slow = "trap 'sleep 1; exit 0' TERM; sleep 300 & wait; sleep 300 & wait"
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=120))
    await engine.exec(sb.id, ["sh", "-c", f"sh -c {_quote(slow)} >/dev/null 2>&1 &"])
    await asyncio.sleep(0.3)  # the trap is set
    started = time.monotonic()
    final = await engine.terminate(sb.id, grace=10)
    assert 1 <= time.monotonic() - started < 8
    assert (final.state, final.reason) == (SandboxState.KILLED, "terminated: ended within grace")

    stubborn = await engine.create(SandboxSpec(runtime=rt, timeout=120))
    await engine.exec(stubborn.id, ["sh", "-c", "trap '' TERM; sleep 300 >/dev/null 2>&1 &"])
    final = await engine.terminate(stubborn.id, grace=0.5)
    assert final.reason == "terminated: killed after the 0.5 s grace period"


async def test_terminate_of_a_paused_sandbox_thaws_it_first(engine: Engine, rt: str) -> None:
    sb = await engine.create(
        SandboxSpec(runtime=rt, timeout=120, command=("python3", "-c", TRAPS_TERM))
    )
    await _until(engine, sb.id, "ready")
    await engine.pause(sb.id)
    final = await engine.terminate(sb.id, grace=10)
    assert (final.state, final.reason) == (SandboxState.EXITED, "terminated: ended within grace")
    assert (await _lines(engine, sb.id))[-1] == f"wrote {1 << 20}"
    # an ended sandbox is answered as it is, and a bad grace is bad input
    assert await engine.terminate(sb.id) == final
    with pytest.raises(InvalidRequestError, match="grace"):
        await engine.terminate(sb.id, grace=-1)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


async def test_grace_comes_from_the_template_else_the_config(tmp_path: Path) -> None:
    settings = Settings(termination_grace_s=0.5)
    engine = Engine(settings)
    await engine.open()
    name = f"grace-{int(time.time() * 1000)}"
    spec = tmp_path / "t.yaml"
    # the python template's build inputs: the same image, so nothing is built
    spec.write_text(f"name: {name}\nsuite: bookworm\napt: [python3-pip]\ntermination_grace_s: 1\n")
    engine.catalog.register_file(spec)
    try:
        for template, grace in (("python", "0.5"), (name, "1")):
            command = ("python3", "-c", IGNORES_TERM)
            sb = await engine.create(SandboxSpec(template=template, timeout=60, command=command))
            await _until(engine, sb.id, "ready")
            final = await engine.terminate(sb.id)
            assert final.reason == f"terminated: killed after the {grace} s grace period"
    finally:
        engine.catalog.remove(name)
        await engine.close()


async def test_pause_needs_the_capability(engine: Engine) -> None:
    sb = await engine.create(SandboxSpec(timeout=60))
    try:
        runtime = engine._live[sb.id].runtime
        # what a runtime without a freezer (or whose probe failed) answers
        runtime.capabilities = type(runtime.capabilities)(pause=False)
        with pytest.raises(CapabilityError, match="does not support pause"):
            await engine.pause(sb.id)
        assert engine.get(sb.id).state == SandboxState.RUNNING
    finally:
        del runtime.capabilities  # back to the class's declaration
        await engine.kill(sb.id)


ENGINE_THAT_PAUSES = """
import asyncio, sys
from tartarus.models import SandboxSpec
from tartarus.node.engine import Engine

async def main():
    engine = Engine()
    await engine.open()
    sandbox = await engine.create(SandboxSpec(runtime=sys.argv[1], timeout=30))
    await engine.exec(sandbox.id, ["sh", "-c", "echo kept > /tmp/state"])
    paused = await engine.pause(sandbox.id)
    left = (paused.expires_at - paused.paused_at).total_seconds()
    print(sandbox.id, left, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_paused_sandbox_is_readopted_paused_with_its_time(rt: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", ENGINE_THAT_PAUSES, rt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().split()
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert len(line) == 2, line
    sid, left = line[0], float(line[1])
    await asyncio.sleep(4)  # a clock that kept counting would have 4 s less
    engine = Engine(adopt=True)
    await engine.open()
    try:
        assert sid in engine.running_ids()
        assert engine.get(sid).state == SandboxState.PAUSED
        resumed = await engine.resume(sid)
        assert resumed.expires_at is not None
        moved = (resumed.expires_at - datetime.now(UTC)).total_seconds()
        assert left - 2.5 < moved <= left, (left, moved)
        assert (await engine.exec(sid, ["cat", "/tmp/state"])).stdout == b"kept\n"
    finally:
        await engine.kill(sid)
        await engine.close()


def test_cli_terminate_checkpoint(rt: str) -> None:
    """Embedded, each command is an engine of its own: only the layer keeper of a runtime
    that can checkpoint lets the next one snapshot (node/sleepfiles.py); crun's layer is out
    of reach (409, and the sandbox is left running)."""
    created = tartarus("create", "--runtime", rt, "--timeout", "60")
    assert created.returncode == 0, created.stderr
    sid = created.stdout.decode().strip()
    assert tartarus("exec", sid, "--", "sh", "-c", "echo e > ~/f").returncode == 0
    done = tartarus("terminate", "--checkpoint", "--grace", "2", sid)
    if rt != "crun":
        assert done.returncode == 0, done.stderr
        printed_sid, snap = done.stdout.decode().split()
        try:
            assert printed_sid == sid and snap.startswith("snap-")
            ran = tartarus("run", "--snapshot", snap, "--runtime", rt, "--", "cat", "/home/user/f")
            if rt == "microvm":  # a VM's checkpoint holds its processes: they are the sandbox
                assert ran.returncode == 2 and b"holds processes" in ran.stderr, ran.stderr
                fork = tartarus("create", "--snapshot", snap, "--timeout", "60")
                assert fork.returncode == 0, fork.stderr
                fid = fork.stdout.decode().strip()
                ran = tartarus("exec", fid, "--", "cat", "/home/user/f")
                assert tartarus("kill", fid).returncode == 0
            assert (ran.returncode, ran.stdout) == (0, b"e\n"), ran.stderr
        finally:
            assert tartarus("checkpoints", "rm", snap).returncode == 0
        return
    assert done.returncode == 1 and done.stdout == b""
    [line] = done.stderr.decode().splitlines()
    assert line.startswith("error: ") and "cannot be snapshotted here" in line, line
    assert tartarus("kill", sid).returncode == 0  # refused before any signal: still running
