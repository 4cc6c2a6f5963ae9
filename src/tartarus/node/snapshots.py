"""Nyx snapshots: save a sandbox's files once, start any number of sandboxes from them.

A snapshot is a copy of the sandbox's writable layer (the overlay's upper directory, with its
whiteouts and opaque-directory xattrs, so deletions are kept too) in
`STATE_DIR/snapshots/<id>/layer`, plus a record (store/snapshots.py). A sandbox started from
it mounts that copy as an extra read-only lower between its own fresh writable layer and the
template image (`lowerdir=SNAP:IMAGE`): every clone sees the snapshot's files, writes only to
its own tmpfs, and no clone, nor the snapshot, ever sees another's writes. Starting a clone
copies nothing. A snapshot of a clone lies over its parent (`lowerdir=SNAP2:SNAP1:IMAGE`),
so a parent cannot be deleted before its children, nor a snapshot while a sandbox started from
it lives (overlayfs does not allow its lowers to change under a mount).

Consistency: a running sandbox is paused (the cgroup freezer; gVisor stops its tasks) while
its layer is copied and resumed right after, so no half-written file is saved; a hibernated
one is copied from its saved layer. Where the runtime cannot pause here, the copy is taken
live and says so in the log.

Memory snapshots (`memory=True`, runtimes that checkpoint here: gVisor, runc with CRIU,
microvm) hold the processes too. The source is hibernated (node/hibernate.py), its checkpoint
image (and the parked agent's socket name, runc) and its saved layer are copied, and it is
woken again:
runsc 20221219's `checkpoint --leave-running` is a checkpoint, destroy and restore as well,
and it failed here waiting for the destroyed sandbox. A sandbox started from one is created
as from any snapshot, then hibernated at once and woken from the snapshot's image instead
of its own: runsc and CRIU both restore into another container id and rootfs path, so each
clone has the source's processes (a Python variable set before the snapshot is there) over
its own writable layer. It keeps the snapshot's runtime and takes no main command (the
restored processes replace whatever was started). A microVM's image is its whole VM, disk
included, so only memory snapshots exist for it and no layer is stacked (`lowers_for`).

Retention (`Settings.snapshot_max_age_s`, `snapshot_max_count` per tenant) is applied after
each snapshot and periodically by every open engine, which also removes snapshots whose
image is gone (a removed template's).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from tartarus.errors import CapabilityError, ConflictError, InvalidRequestError, TartarusError
from tartarus.models import TERMINAL_STATES, SandboxSpec, SandboxState
from tartarus.node import sleepfiles
from tartarus.node.hibernate import PARKED
from tartarus.store.snapshots import Snapshot

if TYPE_CHECKING:
    from tartarus.node.engine import Engine
    from tartarus.node.live import LiveSandbox
    from tartarus.runtimes.base import Runtime

log = structlog.get_logger("tartarus.nyx")

LAYER = "layer"
MEMORY = "memory"  # a memory snapshot's checkpoint image (and the agent's parked socket name)
RETENTION_SCAN_S = 60.0
LIVE_STATES = [s for s in SandboxState if s not in TERMINAL_STATES]


def layer_of(engine: Engine, snapshot_id: str) -> Path:
    return engine.settings.snapshots_dir / snapshot_id / LAYER


def lowers(engine: Engine, snap: Snapshot) -> list[Path]:
    """The layers a clone of `snap` stacks above its image, topmost first."""
    chain: list[Path] = []
    current: Snapshot | None = snap
    while current is not None:
        chain.append(layer_of(engine, current.id))
        current = engine.snapshots.get(current.parent, any_tenant=True) if current.parent else None
    return chain


def lowers_for(engine: Engine, snap: Snapshot, runtime: Runtime) -> list[Path]:
    """What a sandbox on `runtime` started from `snap` stacks: nothing for a VM's memory
    snapshot, whose image holds the VM's whole disk (the guest mounts no host layer)."""
    if snap.memory and not runtime.files_on_host:
        return []
    return lowers(engine, snap)


def resolve_for_create(engine: Engine, spec: SandboxSpec, tenant: str | None) -> Snapshot:
    """The snapshot a create names (404 for another tenant's), checked against the request:
    its template must be the snapshot's and the image the layer was written over must still
    be here."""
    assert spec.snapshot is not None
    snap = engine.snapshots.get(spec.snapshot, tenant=tenant, any_tenant=tenant is None)
    if spec.template != snap.template:
        raise InvalidRequestError(
            f"snapshot {snap.id} is of template {snap.template!r}, not {spec.template!r}"
        )
    if snap.memory and spec.runtime not in (None, "auto", snap.runtime):
        raise InvalidRequestError(
            f"snapshot {snap.id} holds memory of a {snap.runtime} sandbox: it restores on"
            f" {snap.runtime} only, not {spec.runtime}"
        )
    if snap.memory and spec.command:
        raise InvalidRequestError(
            f"snapshot {snap.id} holds processes, which replace a main command: run it with exec"
        )
    if not engine.images.exists(snap.image) or not layer_of(engine, snap.id).is_dir():
        raise ConflictError(f"snapshot {snap.id} is unusable: its files or its image are gone")
    return snap


def _refusal(live: LiveSandbox, memory: bool) -> str | None:
    sandbox, sid = live.sandbox, live.sandbox.id
    if live.killed.is_set() or live.done.is_set() or live.terminating:
        return f"sandbox {sid} is ending"
    if sandbox.state not in (SandboxState.RUNNING, SandboxState.PAUSED, SandboxState.HIBERNATED):
        return f"sandbox {sid} is {sandbox.state.value}, not running"
    if sandbox.pool is not None:
        return f"sandbox {sid} waits in a warm pool"
    if not live.runtime.files_on_host and not memory:
        return (
            f"runtime {live.runtime.name!r} does not support files-only snapshots: the"
            " sandbox's files live on its own disk, which a memory snapshot saves (--memory)"
        )
    return None


async def take(
    engine: Engine, live: LiveSandbox, name: str | None, *, memory: bool = False
) -> Snapshot:
    """Copy `live`'s writable layer (and with `memory` its processes) into a new snapshot
    and record it."""
    if (why := _refusal(live, memory)) is not None:
        raise ConflictError(why)
    sandbox = live.sandbox
    if name is not None:  # a clear 409 before any copying
        with contextlib.suppress(TartarusError):
            taken = engine.snapshots.get(name, tenant=sandbox.tenant)
            if taken.name == name:
                raise ConflictError(f"a snapshot named {name!r} exists ({taken.id})")
    snap_id = f"snap-{secrets.token_hex(6)}"
    target = engine.settings.snapshots_dir / snap_id
    engine.settings.snapshots_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    target.mkdir(mode=0o711)  # clones' unprivileged root must traverse to the layer
    t0 = time.perf_counter()
    try:
        if memory:
            await _save_memory(engine, live, target)
        else:
            await _copy_layer(engine, live, target / LAYER)
        ms = round((time.perf_counter() - t0) * 1000, 2)
        snap = Snapshot(
            id=snap_id,
            name=name,
            tenant=sandbox.tenant,
            template=sandbox.spec.template,
            image=sandbox.image,
            runtime=sandbox.runtime,
            resources=sandbox.resources,
            source=sandbox.id,
            parent=sandbox.spec.snapshot,
            size_bytes=sleepfiles.disk_bytes(target),
            memory=memory,
            created_at=datetime.now(UTC),
        )
        engine.snapshots.insert(snap)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    engine._observe("snapshot", ms)
    log.info("snapshot taken", sandbox=sandbox.id, snapshot=snap_id, ms=ms, bytes=snap.size_bytes)
    apply_retention(engine, tenants={snap.tenant}, keep=snap_id)
    return snap


async def _copy_layer(engine: Engine, live: LiveSandbox, dest: Path) -> None:
    """The upper directory to `dest`, frozen while it is copied where the runtime can."""
    if live.sandbox.state == SandboxState.HIBERNATED:
        saved = sleepfiles.hibernated_dir(live.directory) / "upper"
        await sleepfiles._run("cp", "-a", str(saved), str(dest))
        return
    paused_here = False
    if live.sandbox.state == SandboxState.RUNNING:
        try:
            await engine.pause(live.sandbox.id)
            paused_here = True
        except CapabilityError as exc:
            log.warning("copying a live layer: cannot pause", sandbox=live.sandbox.id, why=str(exc))
    try:
        layer = sleepfiles.Layer(live.directory)
        if not layer.reachable():
            raise ConflictError(
                f"sandbox {live.sandbox.id} cannot be snapshotted here: its writable layer"
                " lives in the mount namespace of the engine process that started it, which"
                " has ended (snapshot it through the server that runs it: set TARTARUS_URL)"
            )
        await layer.save(dest)
    finally:
        if paused_here:
            with contextlib.suppress(ConflictError):  # ended meanwhile: nothing to resume
                await engine.resume(live.sandbox.id)


async def _save_memory(engine: Engine, live: LiveSandbox, target: Path) -> None:
    """Hibernate `live` (409 where it cannot be), copy its image and layer, wake it again."""
    sid = live.sandbox.id
    asleep = live.sandbox.state == SandboxState.HIBERNATED
    if not asleep:
        await engine.hibernate(sid)
    try:
        saved = sleepfiles.hibernated_dir(live.directory)
        await sleepfiles._run("cp", "-a", str(saved / "upper"), str(target / LAYER))
        (target / MEMORY).mkdir()
        await sleepfiles._run("cp", "-a", str(saved / "image"), str(target / MEMORY / "image"))
        if (saved / PARKED).exists():
            shutil.copy2(saved / PARKED, target / MEMORY / PARKED)
    finally:
        if not asleep:
            await engine.wake(sid)


async def restore_memory(engine: Engine, live: LiveSandbox, snap: Snapshot) -> None:
    """Give `live`, just started from `snap`, the snapshot's processes in place of its own:
    hibernate it, put the snapshot's image where its own was saved, and wake it."""
    if live.runtime.name != snap.runtime:
        raise ConflictError(f"snapshot {snap.id} restores on {snap.runtime} only")
    await engine.hibernate(live.sandbox.id)
    saved = sleepfiles.hibernated_dir(live.directory)
    shutil.rmtree(saved / "image")
    (saved / PARKED).unlink(missing_ok=True)
    source = engine.settings.snapshots_dir / snap.id / MEMORY
    await sleepfiles._run("cp", "-a", str(source / "image"), str(saved / "image"))
    if (source / PARKED).exists():
        shutil.copy2(source / PARKED, saved / PARKED)
    await engine.wake(live.sandbox.id)


def _users(engine: Engine) -> set[str]:
    """Snapshots that a live sandbox was started from, or that lie below another snapshot."""
    used = {s.spec.snapshot for s in engine.sandboxes.list(LIVE_STATES) if s.spec.snapshot}
    used |= {s.parent for s in engine.snapshots.list(any_tenant=True) if s.parent}
    return {u for u in used if u is not None}


def delete(engine: Engine, ref: str, *, tenant: str | None = None) -> Snapshot:
    """Delete the record and the files; 409 while a sandbox or snapshot depends on it."""
    snap = engine.snapshots.get(ref, tenant=tenant, any_tenant=tenant is None)
    if children := engine.snapshots.children(snap.id):
        raise ConflictError(
            f"snapshot {snap.id} lies below {', '.join(children)}; delete those first"
        )
    users = [s.id for s in engine.sandboxes.list(LIVE_STATES) if s.spec.snapshot == snap.id]
    if users:
        raise ConflictError(f"snapshot {snap.id} is in use by {', '.join(users)}")
    _remove(engine, snap)
    return snap


def _remove(engine: Engine, snap: Snapshot) -> None:
    engine.snapshots.delete(snap.id)
    shutil.rmtree(engine.settings.snapshots_dir / snap.id, ignore_errors=True)


def apply_retention(
    engine: Engine, *, tenants: set[str | None] | None = None, keep: str | None = None
) -> list[str]:
    """Delete snapshots past the age limit or the per-tenant count (oldest first) and those
    whose image is gone; never one in use, nor `keep` (the one just taken). Returns ids."""
    max_age, max_count = engine.settings.snapshot_max_age_s, engine.settings.snapshot_max_count
    everything = engine.snapshots.list(any_tenant=True)  # oldest first
    by_tenant: dict[str | None, list[Snapshot]] = defaultdict(list)
    for snap in everything:
        if tenants is None or snap.tenant in tenants:
            by_tenant[snap.tenant].append(snap)
    if not by_tenant:
        return []
    used = _users(engine)
    cutoff = datetime.now(UTC) - timedelta(seconds=max_age)
    doomed: list[Snapshot] = []
    for snaps in by_tenant.values():
        left = len(snaps)
        for snap in snaps:
            over = max_count > 0 and left > max_count
            old = max_age > 0 and snap.created_at < cutoff
            gone = not engine.images.exists(snap.image)
            if (over or old or gone) and snap.id not in used and snap.id != keep:
                doomed.append(snap)
                left -= 1
    for snap in doomed:
        _remove(engine, snap)
        log.info("snapshot deleted by retention", snapshot=snap.id, tenant=snap.tenant)
    return [s.id for s in doomed]


async def retention_loop(engine: Engine) -> None:
    """Apply the retention policy every minute (or sooner for short ages)."""
    age = engine.settings.snapshot_max_age_s
    interval = min(RETENTION_SCAN_S, age / 4) if age > 0 else RETENTION_SCAN_S
    while True:
        await asyncio.sleep(max(interval, 1.0))
        try:
            apply_retention(engine)
        except (TartarusError, OSError) as exc:
            log.warning("snapshot retention failed", error=str(exc))
