"""The hostile-workload suite (non-network half): an attacker inside a sandbox, on crun, runc,
gVisor and microvm, tries to read, see, signal, mount, load, trace, escalate and exhaust its
way out.

Each test asserts the attacks FAILED (gVisor's sentry may refuse with another errno than the
host kernel would: any failure counts, success never does), that the host is unharmed, and
that a bystander sandbox started beside the attacker still answers and keeps its files.
The network half (TCP/UDP/DNS/ICMP, allowlists, metadata) is tests/network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tartarus.errors import AgentError
from tartarus.models import Resources, SandboxSpec
from tartarus.node.engine import Engine
from tartarus.runtimes.bundle import host_uid
from tests.hostile.probe import HOSTILE_RUNTIMES, exec_out, gvisor_or_skip

SECRET = "tt-bystander-secret-8d1f"
HOST_MARK = "TT_HOST_ONLY_7c2e"
os.environ[HOST_MARK] = "1"  # the engine's (host) environment: never visible inside


@dataclass
class Pair:
    engine: Engine
    rt: str
    attacker: str
    bystander: str


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    eng = Engine()
    await eng.open()
    try:
        yield eng
    finally:
        await eng.close()


@pytest.fixture(params=HOSTILE_RUNTIMES)
async def pair(engine: Engine, request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    rt: str = request.param
    await gvisor_or_skip(rt)
    small = Resources(cpu=0.5, memory_mb=256, pids=64, disk_mb=64)
    attacker = await engine.create(SandboxSpec(runtime=rt, timeout=120, resources=small))
    bystander = await engine.create(SandboxSpec(runtime=rt, timeout=120))
    try:
        await engine.agent(bystander.id).write_file("/home/user/secret.txt", SECRET.encode())
        yield Pair(engine, rt, attacker.id, bystander.id)
        # the bystander is unaffected: alive, its file intact, answering promptly
        t = time.perf_counter()
        agent = engine.agent(bystander.id)
        assert await agent.read_file("/home/user/secret.txt") == SECRET.encode()
        assert await exec_out(engine, bystander.id, "echo", "ok") == "ok\n"
        assert time.perf_counter() - t < 5
    finally:
        await engine.kill(attacker.id)
        await engine.kill(bystander.id)


async def _attack(pair: Pair, script: str, timeout: float = 60) -> dict[str, object]:
    out = await exec_out(pair.engine, pair.attacker, "python3", "-c", script, timeout=timeout)
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


SNOOP = r"""
import ctypes, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
r = {}
def attempt(name, fn):
    try:
        r[name] = ["ok", repr(fn())[:200]]
    except OSError as e:
        r[name] = ["denied", e.errno]
def sys(name, nr, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(nr, *args)
    r[name] = ["ok", rc] if rc != -1 else ["denied", ctypes.get_errno()]
attempt("shadow", lambda: open("/etc/shadow").read())
attempt("proc1_environ", lambda: open("/proc/1/environ", "rb").read())
attempt("proc1_cmdline", lambda: open("/proc/1/cmdline", "rb").read())
for i, path in enumerate(PATHS):
    attempt(f"guess{i}", lambda: open(path).read())
procs = []
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmd:  # a VM's kernel threads have none: they are its own kernel's
            procs.append(cmd)
r["procs"] = procs
attempt("kill_engine", lambda: os.kill(ENGINE_PID, 0))  # ESRCH: not in its pid ns
attempt("kill_bystander", lambda: os.kill(BYSTANDER_PID, 0))
buf = ctypes.create_string_buffer(64)
iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 64)
sys("process_vm_readv", 310, 1, iov, 1, iov, 1, 0)
sys("mount", 165, b"none", b"/mnt", b"tmpfs", 0, 0)
sys("finit_module", 313, 0, b"", 0)
sys("init_module", 175, 0, 0, b"")
attempt("raw_icmp", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
attempt("packet", lambda: socket.socket(17, socket.SOCK_RAW, 0))
ts = (ctypes.c_long * 2)(1, 0)
sys("clock_settime", 227, 0, ts)
sys("settimeofday", 164, ts, 0)
sys("ptrace_attach_1", 101, 16, 1, 0, 0)
sys("ptrace_traceme", 101, 0, 0, 0, 0)
sys("setuid0", 105, 0)
sys("unshare_user", 272, 0x10000000)
sys("chroot", 161, b"/tmp")
r["ids"] = [os.getuid(), os.geteuid(), os.getgid()]
caps = ("CapEff", "CapPrm", "CapBnd")
r["caps"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith(caps)]
print(json.dumps(r))
"""


async def test_snooping_and_escape(pair: Pair, engine: Engine) -> None:
    bystander_layer = engine.settings.sandboxes_dir / pair.bystander / "layer" / "upper"
    paths = [
        f"{bystander_layer}/home/user/secret.txt",
        f"/var/lib/tartarus/sandboxes/{pair.bystander}/layer/upper/home/user/secret.txt",
        f"/proc/{os.getpid()}/environ",
        f"/proc/{os.getpid()}/root/etc/shadow",
        "/.tartarus/../../etc/shadow",
    ]
    bystander_pid = engine._live[pair.bystander].init_pid  # its agent, as the host sees it
    script = SNOOP.replace("PATHS", repr(paths)).replace("ENGINE_PID", str(os.getpid()))
    script = script.replace("BYSTANDER_PID", str(bystander_pid))
    before = time.time()
    r = await _attack(pair, script)
    text = json.dumps(r)
    assert SECRET not in text and HOST_MARK not in text, "host or bystander data leaked"
    assert r["shadow"][0] == "denied", r["shadow"]  # type: ignore[index]
    for i in range(len(paths)):
        assert r[f"guess{i}"][0] == "denied", (paths[i], r[f"guess{i}"])  # type: ignore[index]
    cmdline = str(r["proc1_cmdline"])
    assert "agent.py" in cmdline or "python" in cmdline, cmdline  # our agent, or a VM's init
    procs = [str(p) for p in r["procs"]]  # type: ignore[attr-defined]
    assert not any("pytest" in p or "runsc" in p or "crun" in p for p in procs), procs
    assert len(procs) < 20, procs  # its own few processes, not the host's hundreds
    assert r["kill_engine"][0] == "denied", r["kill_engine"]  # type: ignore[index]
    assert r["kill_bystander"][0] == "denied", r["kill_bystander"]  # type: ignore[index]
    for name in (
        "mount",
        "finit_module",
        "init_module",
        "raw_icmp",
        "packet",
        "clock_settime",
        "settimeofday",
        "ptrace_attach_1",
        "process_vm_readv",
        "setuid0",
        "unshare_user",
        "chroot",
    ):
        assert r[name][0] == "denied" and r[name][1] != 0, (name, r[name])  # type: ignore[index]
    assert r["ids"] == [1000, 1000, 1000]
    assert set(r["caps"]) == {"0000000000000000"}, r["caps"]  # type: ignore[arg-type]
    assert abs(time.time() - before) < 60  # the host clock did not move


async def test_setuid_binary(pair: Pair, engine: Engine) -> None:
    """A setuid-root `id` planted in the attacker's layer runs as the user all the same."""
    if pair.rt == "microvm":
        await _setuid_in_vm(pair)
        return
    if pair.rt == "gvisor":  # its gofer caches the tree: plant it from inside instead
        code = "import shutil, os; shutil.copy('/usr/bin/id', '/tmp/suid-id')"
        await exec_out(engine, pair.attacker, "python3", "-c", code)
        target = engine.settings.sandboxes_dir / pair.attacker / "layer" / "upper" / "tmp"
    else:
        target = engine.settings.sandboxes_dir / pair.attacker / "layer" / "upper" / "tmp"
        rootfs = engine.images.rootfs(engine.get(pair.attacker).image)
        shutil.copy(rootfs / "usr/bin/id", target / "suid-id")
    planted = target / "suid-id"
    os.chown(planted, host_uid(0), host_uid(0))  # root inside the sandbox
    os.chmod(planted, 0o4755)
    out = await exec_out(engine, pair.attacker, "/tmp/suid-id", "-u", check=False)
    assert out.strip() == "1000", out
    su = await exec_out(engine, pair.attacker, "sh", "-c", "su -c id root </dev/null", check=False)
    assert "uid=0" not in su


async def _setuid_in_vm(pair: Pair) -> None:
    """A VM's files are on its own disk, out of the host's reach, and only the guest's init
    is root there: the image's own setuid-root binaries stand in for a planted one."""
    find = "find / -xdev -perm -4000 -user root -type f 2>/dev/null"
    found = (await exec_out(pair.engine, pair.attacker, "sh", "-c", find, check=False)).split()
    assert "/usr/bin/mount" in found and "/usr/bin/su" in found, found
    tries = "mount -t tmpfs none /tmp; echo mount=$?; grep -c ' /tmp tmpfs' /proc/mounts"
    out = await exec_out(pair.engine, pair.attacker, "sh", "-c", tries, check=False)
    assert "mount=0" not in out and out.strip().endswith("0"), out
    su = "su -c id root </dev/null"
    assert "uid=0" not in await exec_out(pair.engine, pair.attacker, "sh", "-c", su, check=False)
    status = await exec_out(pair.engine, pair.attacker, "cat", "/proc/self/status")
    assert "NoNewPrivs:\t1" in status, status


EXHAUST = r"""
import json, os, resource, subprocess, threading, time
r = {}
fds = []
try:
    while len(fds) < 100000:
        fds.append(os.open("/dev/null", os.O_RDONLY))
    r["fds"] = len(fds)
except OSError as e:
    r["fds"] = ["denied", len(fds)]
for fd in fds:
    os.close(fd)
try:
    with open("/tmp/fill", "wb") as f:
        for _ in range(200):
            f.write(b"\0" * 2**20)
            f.flush()
    r["disk"] = "filled"
except OSError as e:
    r["disk"] = ["denied", e.errno]
os.unlink("/tmp/fill")
n = 0
try:
    for n in range(10**6):
        open(f"/tmp/i{n}", "w").close()
        if n >= 20000:
            break
    r["inodes"] = ["created", n]
except OSError as e:
    r["inodes"] = ["denied", n]
pids = []
try:
    for _ in range(500):
        pids.append(subprocess.Popen(["sleep", "30"]))
    r["pids"] = len(pids)
except OSError as e:
    r["pids"] = ["denied", len(pids)]
for p in pids:
    p.kill(); p.wait()
print(json.dumps(r))
"""


async def test_exhaustion(pair: Pair, engine: Engine) -> None:
    """File descriptors, disk, inodes, pids, then memory each hit the sandbox's own limit."""
    host_inodes = os.statvfs(engine.settings.state_dir).f_ffree
    r = await _attack(pair, EXHAUST, timeout=90)
    assert r["fds"][0] == "denied" and r["fds"][1] <= 4096, r  # type: ignore[index]
    assert r["disk"][0] == "denied", r  # type: ignore[index]
    # the layer's tmpfs caps its inodes (4096 for 64 MiB), and none land on the host's disk
    assert r["inodes"][0] == "denied" and r["inodes"][1] <= 4096, r  # type: ignore[index]
    assert os.statvfs(engine.settings.state_dir).f_ffree > host_inodes - 1000, r
    assert r["pids"][0] == "denied" and r["pids"][1] < 64, r  # type: ignore[index]
    usage = shutil.disk_usage(engine.settings.state_dir)
    assert usage.free > 100 * 2**20  # the host's disk was not touched
    hog = "x = bytearray(1024 * 2**20)\nx[::4096] = b'1' * len(x[::4096])\nprint('allocated')"
    try:  # 1 GiB over a 256 MiB limit: the OOM killer ends it (on gVisor, maybe the sandbox)
        out = await exec_out(engine, pair.attacker, "python3", "-c", hog, check=False)
        assert "allocated" not in out
    except AgentError:  # the guest's OOM killer may pick the agent: the VM ends
        assert pair.rt in ("gvisor", "microvm")


async def test_cpu_and_output_flood(pair: Pair, engine: Engine) -> None:
    """Busy threads and an output flood in the attacker: the host and the bystander stay
    responsive, and the attacker stays within its CPU quota (0.5 cores)."""
    spin = "import threading\ndef f():\n    while True: pass\n"
    spin += "for _ in range(4): threading.Thread(target=f, daemon=True).start()\nf()"
    cmd = f"python3 -c '{spin}' & yes | head -c 300000000 & wait"
    flood = asyncio.create_task(exec_out(engine, pair.attacker, "sh", "-c", cmd, check=False))
    try:
        await asyncio.sleep(2)
        cpu0, t0 = _cgroup_cpu(pair.attacker), time.perf_counter()
        rounds = []
        for _ in range(5):
            t = time.perf_counter()
            assert await exec_out(engine, pair.bystander, "echo", "hi") == "hi\n"
            rounds.append(time.perf_counter() - t)
        await asyncio.sleep(1)
        cores = (_cgroup_cpu(pair.attacker) - cpu0) / 1e9 / (time.perf_counter() - t0)
        assert sorted(rounds)[2] < 1.5, rounds
        if pair.rt != "gvisor":  # the sentry's own threads share the quota differently
            assert cores < 0.7, cores
    finally:
        flood.cancel()
        await engine.kill(pair.attacker)
        with contextlib.suppress(asyncio.CancelledError, AgentError):
            await flood


async def test_kill_everything(pair: Pair, engine: Engine) -> None:
    """`kill -9 -1` from inside reaches only the attacker's own processes."""
    try:
        await exec_out(engine, pair.attacker, "sh", "-c", "kill -9 -1", check=False)
    except AgentError:  # gVisor lets the user's signal reach its agent (pid 1), and a VM's
        assert pair.rt in ("gvisor", "microvm")  # agent is the user's own process: it ends
    assert os.getppid() > 1  # the test (and the engine in it) lives on


def _cgroup_cpu(sandbox_id: str) -> int:
    from tartarus.node.enforcement import cpu_ns

    return cpu_ns(sandbox_id)
