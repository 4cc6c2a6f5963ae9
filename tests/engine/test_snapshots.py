"""Nyx snapshots through the engine, on every runtime: one sandbox's files saved once, three
sandboxes started from them, each independent afterwards; with its memory too (on runtimes
that checkpoint), the clones go on with its processes; the bytes of deleted snapshots,
sandboxes and templates gone from disk; bad input refused; retention applied.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from tartarus.errors import CapabilityError, ConflictError, InvalidRequestError, NotFoundError
from tartarus.models import SandboxSpec, SandboxState
from tartarus.node import snapshots
from tartarus.node.engine import Engine
from tests.engine.helpers import tartarus
from tests.engine.test_hibernate import CHECKPOINTING, _checkpointing
from tests.images.conftest import make_busybox_layout


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    eng = Engine()
    await eng.open()
    try:
        yield eng
    finally:
        await eng.close()


async def sh(engine: Engine, sid: str, script: str, tenant: str | None = None) -> str:
    result = await engine.exec(sid, ["sh", "-c", script], tenant=tenant)
    assert result.exit_code == 0, result
    return result.stdout.decode()


def du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


@pytest.mark.runtimes(
    "crun", "runc", "gvisor", why="microvm: memory snapshots only, tests/microvm/test_sleep.py"
)
async def test_three_sandboxes_from_one_snapshot_are_independent(
    engine: Engine, runtime: str
) -> None:
    source = await engine.create(SandboxSpec(runtime=runtime, timeout=120))
    clones: list[str] = []
    try:
        await sh(engine, source.id, "echo from-source > ~/data.txt; mkdir -p ~/d; echo 2 > ~/d/two")
        snap = await engine.snapshot(source.id, name=f"fork-{runtime}")
        assert snap.template == "python" and snap.source == source.id and snap.size_bytes > 0
        assert snap.memory is False  # files only
        assert engine.get(source.id).state == SandboxState.RUNNING  # resumed after
        await sh(engine, source.id, "echo later > ~/data.txt")  # after the snapshot: not in it
        for _ in range(3):
            clone = await engine.create(
                SandboxSpec(runtime=runtime, timeout=120, snapshot=f"fork-{runtime}")
            )
            assert clone.spec.snapshot == snap.id  # the name resolved to the id
            clones.append(clone.id)
        for i, cid in enumerate(clones):
            assert await sh(engine, cid, "cat ~/data.txt ~/d/two") == "from-source\n2\n"
            await sh(engine, cid, f"echo clone-{i} > ~/data.txt; touch ~/only-{i}")
        for i, cid in enumerate(clones):
            out = await sh(engine, cid, "cat ~/data.txt; echo ~/*")  # no `ls`: gVisor's statx
            assert out.splitlines()[0] == f"clone-{i}"
            assert [f"only-{j}" in out for j in range(3)] == [j == i for j in range(3)]
        layer = snapshots.layer_of(engine, snap.id)
        assert (layer / "home/user/data.txt").read_text() == "from-source\n"
        assert not any((layer / "home/user").glob("only-*"))
        # a snapshot of a clone lies over its parent, which it keeps from being deleted
        child = await engine.snapshot(clones[0])
        assert child.parent == snap.id
        grandchild = await engine.create(SandboxSpec(timeout=60, snapshot=child.id))
        clones.append(grandchild.id)
        assert await sh(engine, grandchild.id, "cat ~/data.txt ~/d/two") == "clone-0\n2\n"
        with pytest.raises(ConflictError, match="lies below"):
            snapshots.delete(engine, snap.id)
        with pytest.raises(ConflictError, match="in use"):
            snapshots.delete(engine, child.id)
        await engine.kill(grandchild.id)
        snapshots.delete(engine, child.id)
    finally:
        for sid in [source.id, *clones]:
            await engine.kill(sid)
    snapshots.delete(engine, snap.id)
    assert not (engine.settings.snapshots_dir / snap.id).exists()
    with pytest.raises(NotFoundError):
        engine.snapshots.get(snap.id)


@pytest.mark.runtimes(
    "crun", "runc", "gvisor", why="microvm: memory snapshots only, tests/microvm/test_sleep.py"
)
async def test_a_paused_sandbox_can_be_snapshotted_and_stays_paused(
    engine: Engine, runtime: str
) -> None:
    sb = await engine.create(SandboxSpec(runtime=runtime, timeout=60))
    try:
        await sh(engine, sb.id, "echo x > ~/x")
        await engine.pause(sb.id)
        snap = await engine.snapshot(sb.id)
        assert engine.get(sb.id).state == SandboxState.PAUSED
        assert (snapshots.layer_of(engine, snap.id) / "home/user/x").read_text() == "x\n"
    finally:
        await engine.kill(sb.id)
    snapshots.delete(engine, snap.id)


@pytest.fixture(params=CHECKPOINTING)
def checkpointing(request: pytest.FixtureRequest) -> str:
    return _checkpointing(request.param)


@pytest.mark.slow
async def test_memory_snapshot_restores_processes_into_three_clones(
    engine: Engine, checkpointing: str
) -> None:
    rt = checkpointing
    source = await engine.create(SandboxSpec(runtime=rt, timeout=120))
    clones: list[str] = []
    taken: list[str] = []
    try:
        await engine.agent(source.id).run_code("x = 41")
        await sh(engine, source.id, "echo f > ~/file")
        snap = await engine.snapshot(source.id, memory=True)
        taken.append(snap.id)
        assert (snap.memory, snap.runtime) == (True, rt)
        assert engine.get(source.id).state == SandboxState.RUNNING  # woken again
        for _ in range(3):
            clone = await engine.create(SandboxSpec(timeout=120, snapshot=snap.id))
            assert clone.runtime == rt
            clones.append(clone.id)
        for i, cid in enumerate(clones):  # the variable is there, the files too
            assert (await engine.agent(cid).run_code("x")).value == "41"
            await engine.agent(cid).run_code(f"x = {i}")
            assert await sh(engine, cid, f"cat ~/file; echo {i} > ~/file") == "f\n"
        for i, cid in enumerate(clones):  # and each went its own way
            assert (await engine.agent(cid).run_code("x")).value == str(i)
        assert (await engine.agent(source.id).run_code("x")).value == "41"
        with pytest.raises(InvalidRequestError, match="main command"):
            await engine.create(SandboxSpec(timeout=60, snapshot=snap.id, command=("true",)))
        with pytest.raises(InvalidRequestError, match=f"restores on {rt} only"):
            await engine.create(SandboxSpec(runtime="crun", timeout=60, snapshot=snap.id))
    finally:
        for sid in [source.id, *clones]:
            await engine.kill(sid)
        for snap_id in taken:
            snapshots.delete(engine, snap_id)
            assert not (engine.settings.snapshots_dir / snap_id).exists()


async def test_crun_cannot_take_a_memory_snapshot(engine: Engine) -> None:
    sb = await engine.create(SandboxSpec(runtime="crun", timeout=60))
    try:
        with pytest.raises(CapabilityError, match="checkpoint"):
            await engine.snapshot(sb.id, memory=True)
        assert engine.get(sb.id).state == SandboxState.RUNNING
        assert all(s.source != sb.id for s in engine.snapshots.list(any_tenant=True))
    finally:
        await engine.kill(sb.id)


async def test_bad_input(engine: Engine) -> None:
    with pytest.raises(NotFoundError, match="no snapshot"):
        await engine.create(SandboxSpec(snapshot="snap-nothere"))
    sb = await engine.create(SandboxSpec(timeout=60), tenant="acme")
    snap = await engine.snapshot(sb.id, name="mine", tenant="acme")
    try:
        with pytest.raises(NotFoundError):  # another tenant's, by id and by name
            await engine.create(SandboxSpec(snapshot=snap.id), tenant="other")
        with pytest.raises(NotFoundError):
            await engine.create(SandboxSpec(snapshot="mine"), tenant="other")
        with pytest.raises(NotFoundError):
            snapshots.delete(engine, snap.id, tenant="other")
        with pytest.raises(NotFoundError):
            await engine.snapshot(sb.id, tenant="other")
        with pytest.raises(InvalidRequestError, match="of template 'python'"):
            await engine.create(SandboxSpec(template="base", snapshot=snap.id), tenant="acme")
        with pytest.raises(ConflictError, match="exists"):
            await engine.snapshot(sb.id, name="mine", tenant="acme")
    finally:
        await engine.kill(sb.id)
    with pytest.raises(ConflictError, match="not running"):  # an ended sandbox
        await engine.snapshot(sb.id, tenant="acme")
    snapshots.delete(engine, snap.id, tenant="acme")
    assert engine.sandboxes.list(tenant="acme", states=snapshots.LIVE_STATES) == []


async def test_disk_accounting(engine: Engine, tmp_path: Path) -> None:
    """Bytes written by sandboxes, kept by snapshots and imported as a template are gone
    once each is deleted."""
    name = f"snapacct-{uuid.uuid4().hex[:8]}"
    info = engine.catalog.register_oci(make_busybox_layout(tmp_path / "layout"), name)
    image_dir = engine.images.path(info.hash)
    assert image_dir.is_dir()
    sb = await engine.create(SandboxSpec(template=name, timeout=60))
    sandbox_dir = engine.settings.sandboxes_dir / sb.id
    try:
        await sh(engine, sb.id, "head -c 3000000 /dev/urandom > ~/blob")
        snap = await engine.snapshot(sb.id)
        kept = await engine.snapshot(sb.id)
        assert snap.size_bytes >= 3_000_000
        assert du(engine.settings.snapshots_dir / snap.id) >= 3_000_000
        clone = await engine.create(SandboxSpec(template=name, timeout=60, snapshot=snap.id))
        assert (await sh(engine, clone.id, "wc -c < ~/blob")).strip() == "3000000"
        clone_dir = engine.settings.sandboxes_dir / clone.id
        await engine.kill(clone.id)
        assert not clone_dir.exists()
    finally:
        await engine.kill(sb.id)
    assert not sandbox_dir.exists()
    snapshots.delete(engine, snap.id)
    assert not (engine.settings.snapshots_dir / snap.id).exists()
    # removing the template removes its image and every snapshot taken on it
    assert (engine.settings.snapshots_dir / kept.id).is_dir()
    engine.catalog.remove(name)
    assert not image_dir.exists()
    assert not (engine.settings.snapshots_dir / kept.id).exists()
    with pytest.raises(NotFoundError):
        engine.snapshots.get(kept.id)


async def test_retention_by_count_and_age(engine: Engine) -> None:
    sb = await engine.create(SandboxSpec(timeout=60), tenant="retain")
    try:
        first = await engine.snapshot(sb.id, tenant="retain")
        second = await engine.snapshot(sb.id, tenant="retain")
        engine.settings = replace(engine.settings, snapshot_max_count=2)
        third = await engine.snapshot(sb.id, tenant="retain")  # the oldest goes
        kept = {s.id for s in engine.snapshots.list(tenant="retain")}
        assert kept == {second.id, third.id}
        assert not (engine.settings.snapshots_dir / first.id).exists()
        engine.settings = replace(engine.settings, snapshot_max_count=0, snapshot_max_age_s=0.5)
        await asyncio.sleep(0.6)
        assert set(snapshots.apply_retention(engine)) == {second.id, third.id}
        assert engine.snapshots.list(tenant="retain") == []
    finally:
        await engine.kill(sb.id)


@pytest.mark.runtimes("crun", "runc", why="a measurement; gvisor's clones: the fork test")
async def test_measure_snapshot_and_clone_start(engine: Engine, runtime: str) -> None:
    """Median of 10 snapshots and of 10 clone starts (printed for the notes; -s to see)."""
    sb = await engine.create(SandboxSpec(runtime=runtime, timeout=120))
    snaps, starts, taken = [], [], []
    try:
        await sh(engine, sb.id, "head -c 1000000 /dev/urandom > ~/blob")
        for _ in range(10):
            t0 = time.perf_counter()
            snap = await engine.snapshot(sb.id)
            snaps.append(time.perf_counter() - t0)
            taken.append(snap.id)
        for _ in range(10):
            t0 = time.perf_counter()
            clone = await engine.create(SandboxSpec(runtime=runtime, timeout=60, snapshot=taken[0]))
            starts.append(time.perf_counter() - t0)
            await engine.kill(clone.id)
    finally:
        await engine.kill(sb.id)
    for snap_id in taken:
        snapshots.delete(engine, snap_id)
    print(
        f"\n{runtime}: snapshot (1 MB layer) median {statistics.median(snaps) * 1000:.1f} ms,"
        f" clone start median {statistics.median(starts) * 1000:.1f} ms"
    )


@pytest.mark.runtimes(
    "crun", "runc", "gvisor", why="microvm: memory snapshots only, tests/microvm/test_sleep.py"
)
def test_cli_embedded(runtime: str) -> None:
    """An embedded CLI's sandbox keeps its layer in the ended CLI's mount namespace; only on
    a runtime that can checkpoint does a keeper hold it for the next command (node/
    sleepfiles.py). Either the snapshot works end to end, or `tartarus snapshot` says why in
    one line (a server always can: tests/api/test_snapshots.py)."""
    created = tartarus("create", "--runtime", runtime, "--timeout", "60")
    assert created.returncode == 0, created.stderr
    sid = created.stdout.decode().strip()
    try:
        assert tartarus("exec", sid, "--", "sh", "-c", "echo e > ~/f").returncode == 0
        taken = tartarus("snapshot", sid)
        assert tartarus("exec", sid, "--", "true").returncode == 0  # resumed, still usable
    finally:
        assert tartarus("kill", sid).returncode == 0
    if taken.returncode == 0:  # reachable (a keeper, or the layer is in our namespace)
        snap_id = taken.stdout.decode().strip()
        ran = tartarus("run", "--snapshot", snap_id, "--", "cat", "/home/user/f")
        assert (ran.returncode, ran.stdout) == (0, b"e\n"), ran.stderr
        listed = tartarus("checkpoints", "ls").stdout.decode()
        assert any(snap_id in line and "snapshot" in line for line in listed.splitlines())
        assert tartarus("checkpoints", "rm", snap_id).returncode == 0
    else:  # unreachable: one clear line, nothing left behind
        assert taken.returncode == 1
        lines = taken.stderr.decode().splitlines()
        assert len(lines) == 1 and "cannot be snapshotted here" in lines[0], lines
    missing = tartarus("run", "--snapshot", "snap-nothere", "--", "true")
    assert missing.returncode == 2
    assert missing.stderr.decode().splitlines() == ["error: no snapshot 'snap-nothere'"]
    gone = tartarus("checkpoints", "rm", "snap-nothere")
    assert gone.returncode == 2 and b"no snapshot" in gone.stderr
