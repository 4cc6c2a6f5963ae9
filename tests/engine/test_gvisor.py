"""gVisor (runsc) end to end through the engine: opt-in runtime, never the default."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from tartarus.config import Settings
from tartarus.models import Resources, SandboxSpec
from tartarus.node.engine import Engine
from tartarus.runtimes.registry import RuntimeRegistry
from tests.conftest import REQUIRED


@pytest.fixture
async def gvisor(engine: Engine) -> str:
    result = await RuntimeRegistry(Settings().state_dir).probe("gvisor")
    if not result.works:
        why = f"gvisor does not work here: {result.reason} {result.hint}".strip()
        if "gvisor" in REQUIRED:
            pytest.fail(why)
        pytest.skip(why)
    return "gvisor"


async def _run(engine: Engine, sid: str, *argv: str) -> tuple[int, bytes, bytes]:
    out: list[bytes] = []
    err: list[bytes] = []

    async def so(b: bytes) -> None:
        out.append(b)

    async def se(b: bytes) -> None:
        err.append(b)

    r = await engine.exec(sid, list(argv), on_stdout=so, on_stderr=se, timeout=30)
    return r.exit_code or 0, b"".join(out), b"".join(err)


async def test_gvisor_end_to_end(engine: Engine, gvisor: str) -> None:
    sb = await engine.create(SandboxSpec(runtime=gvisor, timeout=60))
    try:
        assert await _run(engine, sb.id, "python3", "-c", "print(6*7)") == (0, b"42\n", b"")
        rc, out, err = await _run(engine, sb.id, "sh", "-c", "echo o; echo e >&2; exit 3")
        assert (rc, out, err) == (3, b"o\n", b"e\n")
        agent = engine.agent(sb.id)
        await agent.write_file("x.txt", b"hello")
        assert await agent.read_file("x.txt") == b"hello"
        code = await agent.run_code("1+1")
        assert code.value == "2"
        _, version, _ = await _run(engine, sb.id, "cat", "/proc/version")
        assert b"4.4.0" in version  # gVisor's kernel, not the host's
        net = "import os, socket\nprint(sorted(os.listdir('/sys/class/net')))\n"
        net += "s = socket.socket()\ns.settimeout(2)\n"
        net += "try:\n    s.connect(('1.1.1.1', 80)); print('connected')\n"
        net += "except OSError as e:\n    print('failed')\n"
        _, out, _ = await _run(engine, sb.id, "python3", "-c", net)
        assert b"connected" not in out and b"failed" in out
        fork = "import os\nn = 0\ntry:\n    for _ in range(100):\n"
        fork += "        if os.fork() == 0:\n            import time; time.sleep(5); os._exit(0)\n"
        fork += "        n += 1\nexcept OSError:\n    pass\nprint(n)\n"
    finally:
        await engine.kill(sb.id)
    small = await engine.create(
        SandboxSpec(runtime=gvisor, timeout=60, resources=Resources(pids=32))
    )
    try:
        _, out, _ = await _run(engine, small.id, "python3", "-c", fork)
        assert 0 < int(out) < 32
    finally:
        await engine.kill(small.id)
    await asyncio.sleep(0.5)
    ps = subprocess.run(["pgrep", "-f", f"runsc.*{sb.id}"], capture_output=True, check=False)
    assert ps.stdout == b""
    root = Path(os.environ["TARTARUS_STATE_DIR"]) / "runtime" / "gvisor"
    assert not list(root.glob(f"*{sb.id}*"))
    assert not list(Path("/sys/fs/cgroup").glob(f"*/tartarus/{sb.id}"))
