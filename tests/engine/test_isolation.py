"""What a sandbox can see and reach: only itself."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tartarus.models import SandboxSpec, SandboxState
from tartarus.node.engine import Engine

PY = "python3"


async def _sandbox(engine: Engine, runtime: str) -> str:
    sandbox = await engine.create(SandboxSpec(template="python", runtime=runtime, timeout=120))
    assert sandbox.state == SandboxState.RUNNING
    return sandbox.id


async def test_sees_only_its_own_processes(engine: Engine, runtime: str) -> None:
    sid = await _sandbox(engine, runtime)
    # processes with a command line: a VM's kernel threads are its own kernel's
    # (one may end between listdir and open: gVisor's relay starts and ends `runsc exec`s)
    code = (
        "import os\n"
        "def cmdline(p):\n"
        "    try:\n"
        "        return open(f'/proc/{p}/cmdline').read()\n"
        "    except OSError:\n"
        "        return ''\n"
        "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit() and cmdline(p)))"
    )
    result = await engine.exec(sid, [PY, "-c", code])
    assert result.exit_code == 0, result.stderr
    pids = eval(result.stdout)
    assert 1 in pids
    # the agent, this python, maybe a shell; on gVisor also the agent's relay (runsc exec),
    # in a VM its init (PID 1) and the agent's zygote
    assert len(pids) <= {"gvisor": 4, "microvm": 4}.get(runtime, 3), pids
    assert max(pids) < (1000 if runtime == "microvm" else 100)


async def test_host_files_are_out_of_reach(engine: Engine, runtime: str) -> None:
    """A world-readable host file does not exist for the sandbox: it has its own root."""
    secret = Path(f"/var/tmp/tartarus-secret-{uuid.uuid4().hex}")
    secret.write_text("host secret")
    secret.chmod(0o644)
    try:
        sid = await _sandbox(engine, runtime)
        script = f"cat {secret}; cat /proc/1/root{secret}; cat /proc/self/root{secret}"
        result = await engine.exec(sid, ["sh", "-c", script])
        assert b"host secret" not in result.stdout
        assert result.exit_code != 0
        # gVisor's /proc/1/root is the sentry's view, which refuses rather than resolves
        absent = result.stderr.count(b"No such file") + result.stderr.count(b"ermission denied")
        assert absent == 3, result.stderr
    finally:
        secret.unlink()


async def test_writes_do_not_reach_the_template_or_the_next_sandbox(
    engine: Engine, runtime: str
) -> None:
    first = await _sandbox(engine, runtime)
    marker = f"marker-{uuid.uuid4().hex}"
    result = await engine.exec(
        first,
        [
            "sh",
            "-c",
            f"echo x > /tmp/{marker} && echo x > ~/{marker}"
            f" && (echo x > /usr/{marker} 2>&1 || echo ro)",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert b"ro" in result.stdout or b"denied" in result.stdout
    rootfs = engine.images.rootfs(engine.sandboxes.get(first).image)
    assert not list(rootfs.rglob(marker))
    second = await _sandbox(engine, runtime)
    check = await engine.exec(second, ["sh", "-c", f"ls /tmp/{marker} ~/{marker}"])
    assert check.exit_code != 0


@pytest.mark.runtimes(
    "crun",
    "runc",
    "gvisor",
    why="microvm: no user namespace, the VM is the boundary; QEMU's own uid: tests/microvm",
)
async def test_the_user_inside_is_not_root_on_the_host(engine: Engine, runtime: str) -> None:
    sid = await _sandbox(engine, runtime)
    result = await engine.exec(sid, ["sh", "-c", "id -u; cat /proc/self/uid_map"])
    uid, mapping = result.stdout.decode().split("\n", 1)
    assert uid == "1000"
    if runtime == "gvisor":
        # the guest's uids live in the sentry; the host sees runsc's sandbox, gofer and stub
        # processes, none root, each with no_new_privs under runsc's own seccomp filter
        assert mapping.split()[:2] == ["0", "0"]
        procs = Path(f"/sys/fs/cgroup/memory/tartarus/{sid}/cgroup.procs").read_text().split()
        statuses = [Path(f"/proc/{pid}/status").read_text() for pid in procs]
        assert statuses
        for status in statuses:
            assert "\nUid:\t0\t" not in status and "\nSeccomp:\t2" in status, status
            assert "\nNoNewPrivs:\t1" in status, status
        return
    assert mapping.split()[:2] == ["0", "100000"]
    procs = Path(f"/sys/fs/cgroup/pids/tartarus/{sid}/cgroup.procs").read_text().split()
    assert procs
    for pid in procs:
        status = Path(f"/proc/{pid}/status").read_text()
        host_uid = int(
            next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]
        )
        assert host_uid >= 100000


@pytest.fixture
def listener_netns() -> Iterator[tuple[str, int]]:
    """A host in its own network namespace, listening on TCP; reachable from this host."""
    name = f"tt-{uuid.uuid4().hex[:8]}"
    host_if, ns_if = f"{name}a", f"{name}b"
    ip = "10.231.7.2"
    cmds = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", name],
        ["ip", "addr", "add", "10.231.7.1/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "-n", name, "addr", "add", f"{ip}/30", "dev", ns_if],
        ["ip", "-n", name, "link", "set", ns_if, "up"],
        ["ip", "-n", name, "link", "set", "lo", "up"],
    ]
    server = None
    try:
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        server = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{name}",
                "python3",
                "-c",
                "import socket; s=socket.socket();"
                "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
                f"s.bind(('{ip}', 8931)); s.listen(); s.settimeout(60)\n"
                "while True:\n c,_=s.accept(); c.sendall(b'hello'); c.close()",
            ],
        )
        for _ in range(50):
            try:
                with socket.create_connection((ip, 8931), timeout=1) as c:
                    assert c.recv(5) == b"hello"
                break
            except OSError:
                import time

                time.sleep(0.1)
        else:
            pytest.fail("the test listener never came up")
        yield ip, 8931
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


async def test_no_network_connection_leaves_the_sandbox(
    engine: Engine, runtime: str, listener_netns: tuple[str, int]
) -> None:
    ip, port = listener_netns
    sid = await _sandbox(engine, runtime)
    code = (
        "import socket\n"
        f"try:\n socket.create_connection(('{ip}', {port}), timeout=3); print('connected')\n"
        "except OSError as e: print('blocked', e.errno)\n"
        "import os; print(sorted(os.listdir('/sys/class/net')))"
    )
    result = await engine.exec(sid, [PY, "-c", code])
    assert b"blocked" in result.stdout, result.stdout
    # a VM's NIC is there (a clone's devices are its template's) but on nothing, and down
    assert (b"['eth0', 'lo']" if runtime == "microvm" else b"['lo']") in result.stdout


async def test_sandbox_records_running_then_killed(engine: Engine, runtime: str) -> None:
    sid = await _sandbox(engine, runtime)
    final = await engine.kill(sid)
    assert final.state == SandboxState.KILLED
    assert final.finished_at is not None
    assert not (engine.settings.sandboxes_dir / sid).exists()
    assert os.path.exists(engine.settings.db_path)


async def test_hardening_no_privileges_and_syscalls_denied(engine: Engine, runtime: str) -> None:
    sid = await _sandbox(engine, runtime)
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('unshare', libc.unshare(0x10000000), ctypes.get_errno())\n"
        "print('mount', libc.mount(b'none', b'/tmp', b'tmpfs', 0, None), ctypes.get_errno())\n"
        "status = open('/proc/self/status').read()\n"
        "print([l for l in status.splitlines() if l.startswith(('CapEff', 'NoNewPrivs'))])\n"
        "print('nnp', libc.prctl(39, 0, 0, 0, 0))\n"  # PR_GET_NO_NEW_PRIVS
    )
    result = await engine.exec(sid, [PY, "-c", code])
    out = result.stdout.decode()
    assert "unshare -1 1" in out, out  # EPERM from seccomp
    assert "mount -1 1" in out, out
    assert "CapEff:\\t0000000000000000" in out, out
    assert "nnp 1" in out, out
    if runtime != "gvisor":  # the sentry's /proc/self/status has no NoNewPrivs line
        assert "NoNewPrivs:\\t1" in out, out
