"""Sandboxes as copy-on-write clones of a template snapshot: each its own clock and RNG, its
own files; and the cold-boot path, which the first sandbox of a plan takes to make one."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tartarus.models import Resources, SandboxSpec
from tartarus.node.engine import Engine

pytestmark = pytest.mark.slow

PROBE = "import os, time; print(os.urandom(16).hex(), time.time())"


async def _out(engine: Engine, sid: str, *argv: str) -> bytes:
    out: list[bytes] = []

    async def so(b: bytes) -> None:
        out.append(b)

    result = await engine.exec(sid, list(argv), on_stdout=so, timeout=120)
    assert result.exit_code == 0
    return b"".join(out)


def _cmdline(engine: Engine, sid: str) -> list[str]:
    pid = engine._live[sid].init_pid
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


async def test_three_clones_have_their_own_clock_rng_and_files(
    engine: Engine, microvm: str
) -> None:
    spec = SandboxSpec(runtime=microvm, timeout=300, resources=Resources(memory_mb=256))
    first = await engine.create(spec)  # builds the template if this plan has none yet
    await engine.kill(first.id)
    clones = await asyncio.gather(*(engine.create(spec) for _ in range(3)))
    try:
        seen = set()
        for sb in clones:
            assert "-incoming" in _cmdline(engine, sb.id)  # restored, not booted
            random_hex, clock = (await _out(engine, sb.id, "python3", "-c", PROBE)).split()
            seen.add(random_hex)
            assert abs(float(clock) - time.time()) < 30  # the host's time, not the template's
            code = await engine.agent(sb.id).run_code("import random; random.random()")
            seen.add(code.value or "")
        assert len(seen) == 6  # no two clones share a kernel or a Python random stream
        await engine.agent(clones[0].id).write_file("mine.txt", b"only here")
        listing = await _out(engine, clones[1].id, "ls")
        assert b"mine.txt" not in listing
    finally:
        await asyncio.gather(*(engine.kill(sb.id) for sb in clones))


async def test_cold_boot_without_templates(
    engine: Engine, microvm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TARTARUS_MICROVM_CLONES", "0")
    sb = await engine.create(SandboxSpec(runtime=microvm, timeout=300, env={"K": "v"}))
    try:
        assert "-incoming" not in _cmdline(engine, sb.id)
        out = await _out(engine, sb.id, "python3", "-c", "import os; print(os.environ['K'])")
        assert out == b"v\n"
        before = time.time()
        clock = float(await _out(engine, sb.id, "python3", "-c", "import time; print(time.time())"))
        assert before - 1 < clock < time.time() + 1  # set after the boot, not a boot behind
    finally:
        await engine.kill(sb.id)


async def test_a_short_timeout_outlives_its_templates_boot(engine: Engine, microvm: str) -> None:
    # the first sandbox of a plan waits for its template's boot (seconds under TCG, longer
    # than this timeout plus the agent's grace): the guest's backstop counts from its HELLO
    spec = SandboxSpec(runtime=microvm, timeout=2, resources=Resources(memory_mb=208))
    sb = await engine.create(spec)
    try:
        await engine.set_timeout(sb.id, 60)  # the agent answers: it has not killed all at start
        assert await _out(engine, sb.id, "echo", "alive") == b"alive\n"
    finally:
        await engine.kill(sb.id)


async def test_a_clone_gets_its_own_environment(engine: Engine, microvm: str) -> None:
    spec = SandboxSpec(runtime=microvm, timeout=300, env={"WHO": "first"})
    first = await engine.create(spec)
    await engine.kill(first.id)
    other = await engine.create(spec.model_copy(update={"env": {"WHO": "second"}}))
    try:
        out = await _out(engine, other.id, "python3", "-c", "import os; print(os.environ['WHO'])")
        assert out == b"second\n"
        code = await engine.agent(other.id).run_code("import os; os.environ['WHO']")
        assert json.loads((code.value or "").replace("'", '"')) == "second"
    finally:
        await engine.kill(other.id)
