"""A closed test world for the network tests: nothing they send can leave this machine.

`world` is a network namespace of its own (tests/network/world.py) linked to the host by a
veth, 100.66.0.1 (host) <-> 100.66.0.2 (world), holding every address a sandbox may try: the
"internet" hosts 100.66.1.10/.11/.20 and 100.66.2.5, its DNS server 100.66.0.53 and a cloud
metadata service on 169.254.169.254. The host routes exactly those to the world, so even a
sandbox whose isolation broke would only ever reach the world. 100.64.0.0/10 is shared
(carrier-grade NAT) space, neither a public address nor a private RFC 1918 one.

The engine resolves through the world's DNS server (`dns_upstream`), which logs every
question it gets: a name the sandbox's rules do not allow must never show up there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tartarus.config import Settings
from tartarus.node import egress, network
from tartarus.node.engine import Engine

HOST_IP, WORLD_IP, WORLD_DNS = "100.66.0.1", "100.66.0.2", "100.66.0.53"
INTERNET, WILD, DENIED, CIDR_HOST = "100.66.1.10", "100.66.1.11", "100.66.1.20", "100.66.2.5"
METADATA = "169.254.169.254"
ROUTED = ("100.66.1.0/24", "100.66.2.0/24", f"{METADATA}/32")
WORLD_ADDRS = (INTERNET, WILD, DENIED, CIDR_HOST, WORLD_DNS, METADATA)


@dataclass
class World:
    pid: int
    log: Path

    def queries(self) -> list[str]:
        return self.log.read_text().split()


def _ip(*args: str, pid: int | None = None) -> None:
    prefix = ["nsenter", "-t", str(pid), "-n"] if pid is not None else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    logdir = Path(tempfile.mkdtemp(prefix="tt-world-"))
    script = Path(__file__).with_name("world.py")
    proc = subprocess.Popen(
        ["unshare", "--net", "--", sys.executable, str(script), str(logdir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    veth = f"tnw{os.getpid() % 100000}"
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        _ip("link", "add", veth, "type", "veth", "peer", "name", "w0", "netns", str(proc.pid))
        _ip("addr", "add", f"{HOST_IP}/24", "dev", veth)
        _ip("link", "set", veth, "up")
        _ip("link", "set", "lo", "up", pid=proc.pid)
        _ip("addr", "add", f"{WORLD_IP}/24", "dev", "w0", pid=proc.pid)
        for addr in WORLD_ADDRS:
            _ip("addr", "add", f"{addr}/32", "dev", "w0", pid=proc.pid)
        _ip("link", "set", "w0", "up", pid=proc.pid)
        _ip("route", "add", "default", "via", HOST_IP, pid=proc.pid)
        for net in ROUTED:
            _ip("route", "replace", net, "via", WORLD_IP)
        yield World(proc.pid, logdir / "queries")
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)
        for net in ROUTED:  # gone with the link already; never leave one behind
            subprocess.run(["ip", "route", "del", net], capture_output=True, check=False)
        for f in logdir.iterdir():
            f.unlink()
        logdir.rmdir()


@pytest.fixture
async def net_engine(world: World) -> AsyncIterator[Engine]:
    eng = Engine(Settings(dns_upstream=f"{WORLD_DNS}:53"))
    await eng.open()
    try:
        yield eng
    finally:
        await eng.close()


# One exec runs every probe at once (threads), each with a short timeout, and prints JSON:
# {key: "ok:<what came back>" | "fail:<exception>"}.
PROBE = r"""
import json, socket, struct, sys, threading
T = 2.0
def tcp(ip, port):
    with socket.create_connection((ip, port), timeout=T) as s:
        return s.recv(64).decode().strip()
def udp(ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(T)
    s.sendto(b"hi", (ip, port)); return s.recvfrom(64)[0].decode()
def resolve(name):
    return socket.gethostbyname(name)
def dns(server, name):
    q = struct.pack("!HHHHHH", 4660, 256, 1, 0, 0, 0)
    q += b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0\0\1\0\1"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(T)
    s.sendto(q, (server, 53)); r = s.recvfrom(512)[0]
    return "rcode=%d,answers=%d" % (r[3] & 15, struct.unpack("!H", r[6:8])[0])
def icmp(ip):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); s.settimeout(T)
    s.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"x" * 8, (ip, 0)); s.recvfrom(64)
    return "pong"
out = {}
def run(key, fn, args):
    try:
        out[key] = "ok:" + str(globals()[fn](*args))
    except Exception as e:
        out[key] = "fail:%s:%s" % (type(e).__name__, str(e)[:60])
ts = [threading.Thread(target=run, args=(k, f, a)) for k, (f, a) in json.loads(sys.argv[1]).items()]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(out))
"""

Probes = dict[str, tuple[str, list[object]]]


async def probe(engine: Engine, sandbox_id: str, probes: Probes) -> dict[str, str]:
    result = await engine.exec(sandbox_id, ["python3", "-c", PROBE, json.dumps(probes)], timeout=60)
    assert result.exit_code == 0, result.stderr
    out: dict[str, str] = json.loads(result.stdout)
    return out


def leftovers(sandbox_id: str, slot: int | None) -> list[str]:
    """What of a sandbox's network is still on the host (should be nothing once it ended)."""
    att_iface = network.iface_of(sandbox_id)
    left = []
    if Path(f"/sys/class/net/{att_iface}").exists():
        left.append(f"veth {att_iface}")
    netns = network.NETNS_DIR / f"tsb-{sandbox_id.removeprefix('sb-')}"
    if netns.exists():
        left.append(f"netns {netns}")
    table = egress.table_name(sandbox_id)
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    if table in listed.stdout:
        left.append(f"nft table {table}")
    if slot is not None and (network.net_dir() / "slots" / str(slot)).exists():
        left.append(f"address slot {slot}")
    return left
