"""A sandbox's network across its life: re-adopted by the next engine (its resolver served
again), hibernated only by a VM (no container runtime here can checkpoint it: a clear 409),
and gone with it when a start fails."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tartarus.config import Settings
from tartarus.errors import ConflictError, RuntimeUnavailableError
from tartarus.models import NetworkMode, SandboxSpec, SandboxState
from tartarus.node import network
from tartarus.node.engine import Engine
from tartarus.runtimes.base import BindMount, ContainerConfig, GuestNetwork
from tests.engine.test_hibernate import CHECKPOINTING, _checkpointing
from tests.network.conftest import CIDR_HOST, DENIED, WORLD_DNS, World, leftovers, probe

PROBES: dict[str, tuple[str, list[object]]] = {
    "name": ("tcp", ["allowed.test", 8080]),
    "cidr": ("tcp", [CIDR_HOST, 8080]),
    "denied": ("tcp", [DENIED, 8080]),
}
RULES = ("allowed.test", "100.66.2.0/24")


def _spec(runtime: str) -> SandboxSpec:
    return SandboxSpec(runtime=runtime, timeout=120, network=NetworkMode.ALLOWLIST, egress=RULES)


async def _check(engine: Engine, sid: str) -> None:
    got = await probe(engine, sid, PROBES)
    assert got["name"] == got["cidr"] == "ok:internet", got
    assert got["denied"].startswith("fail:"), got


@pytest.fixture(params=[r for r in CHECKPOINTING if r != "microvm"])  # a VM sleeps: below
def rt(request: pytest.FixtureRequest) -> str:
    return _checkpointing(request.param)


async def test_hibernation_is_refused(net_engine: Engine, rt: str, world: World) -> None:
    sid = (await net_engine.create(_spec(rt))).id
    with pytest.raises(ConflictError, match=f"{rt} cannot checkpoint a sandbox with network"):
        await net_engine.hibernate(sid)
    assert net_engine.get(sid).state == SandboxState.RUNNING
    await _check(net_engine, sid)  # untouched
    await net_engine.kill(sid)


@pytest.fixture
def vm() -> str:
    return _checkpointing("microvm")


async def test_a_vm_sleeps_and_wakes_with_its_network(
    net_engine: Engine, world: World, vm: str
) -> None:
    """The VM's state holds its NIC's address; the tap it wakes onto is in the same netns."""
    sid = (await net_engine.create(_spec(vm))).id
    await _check(net_engine, sid)
    await net_engine.hibernate(sid)
    assert net_engine.get(sid).state == SandboxState.HIBERNATED
    await _check(net_engine, sid)  # wakes it
    att = network.load(net_engine.settings.sandboxes_dir / sid)
    assert att is not None
    await net_engine.kill(sid)
    assert leftovers(sid, att.slot) == []


async def test_a_vm_forked_from_memory_takes_its_own_address(
    net_engine: Engine, world: World, vm: str
) -> None:
    """The snapshot's guest had its parent's address: the fork's HELLO gives it its own."""
    parent = (await net_engine.create(_spec(vm))).id
    sids = [parent]
    try:
        snap = await net_engine.snapshot(parent, memory=True)
        fork = await net_engine.create(
            SandboxSpec(snapshot=snap.id, timeout=120, network=NetworkMode.ALLOWLIST, egress=RULES)
        )
        sids.append(fork.id)
        show = ["sh", "-c", "/.tartarus/busybox ip -4 addr show eth0"]
        for sid in sids:
            att = network.load(net_engine.settings.sandboxes_dir / sid)
            assert att is not None
            out = (await net_engine.exec(sid, show)).stdout.decode()
            assert f"inet {att.guest_ip}/30" in out, out
            await _check(net_engine, sid)
    finally:
        for sid in sids:
            await net_engine.kill(sid)


@pytest.mark.parametrize("runtime_name", ["crun", "runc", "microvm"])
async def test_readopted_sandbox_keeps_its_network(world: World, runtime_name: str) -> None:
    settings = Settings(dns_upstream=f"{WORLD_DNS}:53")
    first = Engine(settings)
    await first.open()
    try:
        sid = (await first.create(_spec(runtime_name))).id
        await _check(first, sid)
    finally:
        await first.close(kill=False)  # its resolver goes with it
    second = Engine(settings, adopt=True)
    await second.open()
    try:
        assert sid in second.running_ids()
        await _check(second, sid)  # a new resolver answers on the same address
        att = network.load(second.settings.sandboxes_dir / sid)
        assert att is not None
        await second.kill(sid)
        assert leftovers(sid, att.slot) == []
    finally:
        await second.close()


async def test_failed_start_leaves_nothing(
    net_engine: Engine, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime fails after the network is up: it goes with the rest."""
    crun = await net_engine.runtimes.select("crun")
    seen: list[Path | None] = []

    async def failing_start(config: ContainerConfig, bundle: Path, log: Path) -> int:
        seen.append(config.netns)
        assert config.netns is not None and config.netns.exists()  # it was set up
        raise RuntimeUnavailableError("crun could not start the sandbox: injected")

    monkeypatch.setattr(crun, "start", failing_start)
    before = {s.id for s in net_engine.list(states=[SandboxState.FAILED])}
    with pytest.raises(RuntimeUnavailableError, match="injected"):
        await net_engine.create(_spec("crun"))
    assert len(seen) == 1
    (failed,) = [s for s in net_engine.list(states=[SandboxState.FAILED]) if s.id not in before]
    assert leftovers(failed.id, None) == []
    slots = network.net_dir() / "slots"
    assert [p for p in slots.iterdir() if p.read_text() == failed.id] == []


async def test_a_vm_whose_nic_cannot_be_set_fails_to_start_and_leaves_nothing(
    net_engine: Engine, world: World, vm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guest reports a NIC it could not configure; the create fails, never a sandbox
    silently without the network it asked for."""
    real = network.Styx.container_parts

    def bad_address(
        self: network.Styx, directory: Path
    ) -> tuple[Path | None, list[BindMount], GuestNetwork | None]:
        netns, binds, guest = real(self, directory)
        assert guest is not None
        return netns, binds, dataclasses.replace(guest, address="300.1.2.3")

    monkeypatch.setattr(network.Styx, "container_parts", bad_address)
    before = {s.id for s in net_engine.list(states=[SandboxState.FAILED])}
    with pytest.raises(RuntimeUnavailableError, match="could not set its NIC up"):
        await net_engine.create(_spec(vm))
    (failed,) = [s for s in net_engine.list(states=[SandboxState.FAILED]) if s.id not in before]
    assert leftovers(failed.id, None) == []
    assert not (net_engine.settings.state_dir / "runtime" / "microvm" / failed.id).exists()
