"""Pre-imported interpreters (the guest agent's zygote) in real sandboxes.

`python3 -c` served by the zygote is compared with the same command exec'd for real (through
`sh -c 'exec "$0" "$@"'`, which the zygote never serves); a zygote still carries its bootstrap
in /proc/self/cmdline, which tells the two apart (documented in guest/zygote.py).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator

import pytest

from tartarus.models import SandboxSpec
from tartarus.node.engine import Engine

# `"tartarus_boot" in cmdline`, written so that the code itself does not contain the marker
IS_ZYGOTE = "('tartarus' + '_boot') in open('/proc/self/cmdline').read()"
PROBE = """\
import sys
modules = sorted(sys.modules)
import json, os
print(json.dumps({
    "argv": sys.argv,
    "orig_argv": sys.orig_argv,
    "executable": sys.executable,
    "name": __name__,
    "globals": sorted(k for k in globals() if k not in ("json", "os", "modules")),
    "flags": list(sys.flags),
    "path": sys.path,
    "modules": modules,
    "cwd": os.getcwd(),
    "uid": os.getuid(),
    "env": {k: v for k, v in os.environ.items() if k.startswith("PROBE_")},
    "own_group": os.getpgid(0) == os.getpid() == os.getsid(0),
    "ppid": os.getppid(),
    "stdin": sys.stdin.read(),
    "zygote": IS_ZYGOTE,
    "hash": hash("tartarus"),
    "urandom": os.urandom(8).hex(),
}))
""".replace("IS_ZYGOTE", IS_ZYGOTE)
VARYING = ("zygote", "hash", "urandom")
# The pids of the zygotes in a sandbox (contexts forked from one match too: exclude them).
ZYGOTES = (
    'm=tartarus; m="${m}_boot"; for p in /proc/[0-9]*; do'
    ' case "$(tr "\\0" " " < "$p/cmdline" 2>/dev/null)" in *"$m"*) echo "${p#/proc/}";; esac;'
    " done"
)


@pytest.fixture
async def sandbox(engine: Engine, runtime: str) -> AsyncIterator[str]:
    sb = await engine.create(SandboxSpec(template="python", runtime=runtime, timeout=300))
    try:
        await _warm(engine, sb.id)
        yield sb.id
    finally:
        await engine.kill(sb.id)


async def _warm(engine: Engine, sandbox_id: str) -> int:
    """Wait until the sandbox's zygote is ready (it forks a run_code context); the context's pid."""
    r = await engine.agent(sandbox_id).run_code(f"import os; {IS_ZYGOTE}, os.getpid()")
    assert r.value is not None and r.value.startswith("(True, "), r
    return int(r.value.split(", ")[1].rstrip(")"))


def _real(argv: list[str]) -> list[str]:
    return ["sh", "-c", 'exec "$0" "$@"', *argv]


async def _probe(engine: Engine, sandbox_id: str, argv: list[str]) -> dict[str, object]:
    env = {"PROBE_VAR": "value"}
    r = await engine.exec(sandbox_id, argv, env=env, cwd="sub", stdin=b"fed in")
    assert r.exit_code == 0, r
    result: dict[str, object] = json.loads(r.stdout)
    return result


def _same(a: dict[str, object], b: dict[str, object]) -> None:
    assert {k: v for k, v in a.items() if k not in VARYING} == {
        k: v for k, v in b.items() if k not in VARYING
    }


async def test_python_ds_contexts_have_pandas_before_the_first_request(
    engine: Engine, runtime: str
) -> None:
    sb = await engine.create(SandboxSpec(template="python-ds", runtime=runtime, timeout=300))
    try:
        agent = engine.agent(sb.id)
        r = await agent.run_code(
            f"import sys; 'pandas' in sys.modules, 'numpy' in sys.modules, {IS_ZYGOTE}"
        )
        assert r.value == "(True, True, True)", r
        t0 = time.perf_counter()
        r = await agent.run_code("import pandas as pd; print(pd.__version__)")
        assert r.error is None and r.stdout.strip()
        assert time.perf_counter() - t0 < 1.0  # imported already: no 300 ms import
        # `python3 -c` gets the pre-imports too, when it can be served faithfully
        code = f"import sys; print('pandas' in sys.modules, {IS_ZYGOTE})"
        deadline = time.monotonic() + 60
        while True:  # a command never waits for pre-imports: the zygote may still be starting
            done = await engine.exec(sb.id, ["python3", "-c", code])
            if done.stdout == b"True True\n" or time.monotonic() > deadline:
                break
            await _warm(engine, sb.id)
        assert done.stdout == b"True True\n"
    finally:
        await engine.kill(sb.id)


async def test_dash_c_by_the_zygote_is_like_an_exec(engine: Engine, sandbox: str) -> None:
    await engine.exec(sandbox, ["mkdir", "-p", "sub"])
    argv = ["python3", "-c", PROBE, "one", "-x"]
    warm = await _probe(engine, sandbox, argv)
    real = await _probe(engine, sandbox, _real(argv))
    assert warm["zygote"] is True and real["zygote"] is False
    _same(warm, real)
    assert warm["argv"] == ["-c", "one", "-x"] and warm["name"] == "__main__"
    assert warm["env"] == {"PROBE_VAR": "value"} and warm["stdin"] == "fed in"
    assert warm["cwd"] == "/home/user/sub" and warm["uid"] == 1000
    # the agent's child, as an exec is (the agent is PID 1 but in a VM, under its init)
    assert warm["own_group"] is True and warm["ppid"] == real["ppid"]
    # each run is a process of its own: fresh random state and hash secret
    again = await _probe(engine, sandbox, argv)
    assert again["zygote"] is True
    assert again["urandom"] != warm["urandom"] and again["hash"] != warm["hash"]


async def test_exit_codes_and_tracebacks_match(engine: Engine, sandbox: str) -> None:
    cases = {
        "pass": (0, None),
        "import sys; sys.exit(3)": (3, None),
        "def f():\n    1 / 0\nf()": (1, None),
        "import os; os.kill(os.getpid(), 15)": (128 + 15, signal.SIGTERM),
    }
    for code, (exit_code, sig) in cases.items():
        mark = f"import sys; print({IS_ZYGOTE}, flush=True)\n"
        warm = await engine.exec(sandbox, ["python3", "-c", mark + code])
        real = await engine.exec(sandbox, _real(["python3", "-c", mark + code]))
        assert warm.stdout == b"True\n" and real.stdout == b"False\n", (code, warm, real)
        assert (warm.exit_code, warm.signal) == (real.exit_code, real.signal) == (exit_code, sig)
        assert warm.stderr == real.stderr, code
        if exit_code == 1:
            assert warm.stderr.endswith(b"ZeroDivisionError: division by zero\n")


async def test_python_env_falls_back_and_timeout_kills(engine: Engine, sandbox: str) -> None:
    code = f"print({IS_ZYGOTE})"
    r = await engine.exec(sandbox, ["python3", "-c", code], env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert r.stdout == b"False\n"  # read at start-up: only a fresh interpreter honours it
    r = await engine.exec(sandbox, ["python3", "-c", code], env={"PROBE_OTHER": "1"})
    assert r.stdout == b"True\n"
    t0 = time.monotonic()
    r = await engine.exec(
        sandbox,
        ["python3", "-c", f"print({IS_ZYGOTE}, flush=True); import time; time.sleep(60)"],
        timeout=1,
    )
    assert time.monotonic() - t0 < 10
    assert r.stdout == b"True\n" and r.timed_out and r.signal == signal.SIGKILL


async def test_a_killed_zygote_is_replaced(engine: Engine, sandbox: str) -> None:
    contexts = {await _warm(engine, sandbox)}
    found = await engine.exec(sandbox, ["sh", "-c", ZYGOTES])
    [zygote] = {int(p) for p in found.stdout.split()} - contexts
    r = await engine.exec(sandbox, ["sh", "-c", f"kill -9 {zygote}"])
    assert r.exit_code == 0
    code = f"import os; print({IS_ZYGOTE}, os.getpid())"
    r = await engine.exec(sandbox, ["python3", "-c", code])
    assert r.exit_code == 0  # served by a new zygote, or exec'd while it starts
    contexts.add(await _warm(engine, sandbox))
    r = await engine.exec(sandbox, ["python3", "-c", code])
    warm, pid = r.stdout.split()
    assert warm == b"True" and int(pid) != zygote
