"""Styx as an attacker sees it: what a sandbox in each network mode can and cannot reach.

Every target is in the test world (conftest.py) or on this host; each test checks a positive
control where the mode allows one, so a broken world cannot make a test pass.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tartarus.models import NetworkMode, SandboxSpec, SandboxState
from tartarus.node import network
from tartarus.node.engine import Engine
from tests.network.conftest import (
    CIDR_HOST,
    DENIED,
    HOST_IP,
    INTERNET,
    METADATA,
    WORLD_DNS,
    Probes,
    World,
    leftovers,
    probe,
)


@pytest.fixture
def host_service() -> Iterator[int]:
    """A listener on every host address: the stand-in for the API port."""
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(8)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def _host_addresses() -> list[str]:
    out = []
    for line in Path("/proc/net/fib_trie").read_text().split("/32 host LOCAL")[:-1]:
        addr = line.split("|--")[-1].strip()
        if not addr.startswith("127.") and addr not in out:
            out.append(addr)
    return out


async def _create(engine: Engine, runtime: str, mode: NetworkMode, *rules: str) -> str:
    spec = SandboxSpec(template="python", runtime=runtime, timeout=120, network=mode, egress=rules)
    sandbox = await engine.create(spec)
    assert sandbox.state == SandboxState.RUNNING
    assert ("network" in sandbox.timings_ms) == (mode != NetworkMode.NONE)
    return sandbox.id


async def _end(engine: Engine, sid: str) -> None:
    att = network.load(engine.settings.sandboxes_dir / sid)
    await engine.kill(sid)
    assert leftovers(sid, att.slot if att else None) == []


async def test_none_reaches_nothing(
    net_engine: Engine, runtime: str, world: World, host_service: int
) -> None:
    sid = await _create(net_engine, runtime, NetworkMode.NONE)
    assert network.load(net_engine.settings.sandboxes_dir / sid) is None  # the fast path
    got = await probe(
        net_engine,
        sid,
        {
            "tcp": ("tcp", [INTERNET, 8080]),
            "udp": ("udp", [INTERNET, 9090]),
            "resolve": ("resolve", [f"none-{runtime}.test"]),
            "dns": ("dns", [WORLD_DNS, f"none-direct-{runtime}.test"]),
            "icmp": ("icmp", [INTERNET]),
            "host": ("tcp", [HOST_IP, host_service]),
        },
    )
    assert all(v.startswith("fail:") for v in got.values()), got
    assert [q for q in world.queries() if q.startswith("none-")] == []
    await net_engine.kill(sid)


async def test_allowlist_holds(
    net_engine: Engine, runtime: str, world: World, host_service: int
) -> None:
    sid = await _create(
        net_engine, runtime, NetworkMode.ALLOWLIST, "allowed.test", "*.wild.test", "100.66.2.0/24"
    )
    att = network.load(net_engine.settings.sandboxes_dir / sid)
    assert att is not None
    probes: Probes = {
        "name": ("resolve", ["allowed.test"]),
        "wild": ("resolve", ["api.wild.test"]),
        "denied_name": ("resolve", ["denied.test"]),
        "tunnel": ("resolve", ["c2VjcmV0LXRva2Vu.exfil.test"]),
        "tunnel_direct": ("dns", [WORLD_DNS, "c2VjcmV0LWRpcmVjdA.exfil.test"]),
        "cidr": ("tcp", [CIDR_HOST, 8080]),
        "direct_ip": ("tcp", [DENIED, 8080]),
        "metadata": ("tcp", [METADATA, 80]),
        "host_veth": ("tcp", [att.host_ip, host_service]),
        **{f"host_{a}": ("tcp", [a, host_service]) for a in _host_addresses()},
    }
    asked_before = len(world.queries())
    got = await probe(net_engine, sid, probes)
    assert got["name"] == f"ok:{INTERNET}" and got["wild"] == "ok:100.66.1.11", got
    assert got["cidr"] == "ok:internet", got
    for key in set(probes) - {"name", "wild", "cidr"}:
        assert got[key].startswith("fail:"), (key, got[key])
    # allowed names resolved through our resolver: now their addresses work
    after = await probe(net_engine, sid, {"tcp": ("tcp", [INTERNET, 8080])})
    assert after["tcp"] == "ok:internet"
    queries = world.queries()[asked_before:]
    assert "allowed.test" in queries  # the positive control went through the world's DNS
    assert not [q for q in queries if "exfil" in q or q == "denied.test"], queries
    await _end(net_engine, sid)


async def test_open_reaches_the_internet_only(
    net_engine: Engine, runtime: str, world: World, host_service: int
) -> None:
    other = await _create(net_engine, runtime, NetworkMode.OPEN)
    sid = await _create(net_engine, runtime, NetworkMode.OPEN)
    att = network.load(net_engine.settings.sandboxes_dir / sid)
    peer = network.load(net_engine.settings.sandboxes_dir / other)
    assert att is not None and peer is not None
    listen = "import socket,time; s=socket.socket(); s.bind(('',7000)); s.listen(); time.sleep(30)"
    listener = await net_engine.exec(
        other, ["sh", "-c", f'python3 -c "{listen}" >/dev/null 2>&1 &']
    )
    assert listener.exit_code == 0
    got = await probe(
        net_engine,
        sid,
        {
            "internet": ("tcp", [INTERNET, 8080]),
            "udp": ("udp", [INTERNET, 9090]),
            "resolve": ("resolve", ["denied.test"]),
            "metadata": ("tcp", [METADATA, 80]),
            "metadata_name": ("resolve", ["meta.test"]),
            "host_veth": ("tcp", [att.host_ip, host_service]),
            "other_sandbox": ("tcp", [peer.guest_ip, 7000]),
            **{f"host_{a}": ("tcp", [a, host_service]) for a in _host_addresses()},
        },
    )
    assert got.pop("internet") == "ok:internet" and got.pop("udp") == "ok:echo:hi", got
    assert got.pop("resolve") == f"ok:{DENIED}"  # every name resolves in open mode
    assert got.pop("metadata_name") == f"ok:{METADATA}"  # ... but the address is dropped
    assert all(v.startswith("fail:") for v in got.values()), got
    await _end(net_engine, other)
    await _end(net_engine, sid)


async def test_rules_change_while_running(net_engine: Engine, runtime: str, world: World) -> None:
    sid = await _create(net_engine, runtime, NetworkMode.ALLOWLIST)
    directory = net_engine.settings.sandboxes_dir / sid
    blocked: Probes = {"tcp": ("tcp", [CIDR_HOST, 8080]), "name": ("resolve", ["allowed.test"])}
    got = await probe(net_engine, sid, blocked)
    assert got["tcp"].startswith("fail:") and got["name"].startswith("fail:"), got
    await net_engine.network.set_rules(
        sid, directory, NetworkMode.ALLOWLIST, ("100.66.2.5", "allowed.test")
    )
    got = await probe(net_engine, sid, {**blocked, "named": ("tcp", ["allowed.test", 8080])})
    assert got == {"tcp": "ok:internet", "name": f"ok:{INTERNET}", "named": "ok:internet"}
    await net_engine.network.set_rules(sid, directory, NetworkMode.ALLOWLIST, ())
    got = await probe(net_engine, sid, {**blocked, "ip": ("tcp", [INTERNET, 8080])})
    assert all(v.startswith("fail:") for v in got.values()), got  # resolved ones went too
    await net_engine.network.set_rules(sid, directory, NetworkMode.OPEN, ())
    got = await probe(net_engine, sid, {"tcp": ("tcp", [DENIED, 8080])})
    assert got == {"tcp": "ok:internet"}
    await _end(net_engine, sid)


async def test_resolved_for_another_sandbox_stays_closed(
    net_engine: Engine, runtime: str, world: World
) -> None:
    allowed = await _create(net_engine, runtime, NetworkMode.ALLOWLIST, "denied.test")
    sid = await _create(net_engine, runtime, NetworkMode.ALLOWLIST, "allowed.test")
    got = await probe(net_engine, allowed, {"a": ("tcp", ["denied.test", 8080])})
    assert got == {"a": "ok:internet"}
    got = await probe(net_engine, sid, {"b": ("tcp", [DENIED, 8080])})
    assert got["b"].startswith("fail:"), got
    await _end(net_engine, allowed)
    await _end(net_engine, sid)
