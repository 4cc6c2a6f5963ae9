"""The zygote (guest/zygote.py) seen through the agent, run as a plain subprocess.

A `python3 -c` served by the zygote must be indistinguishable from one the agent execs: each
test runs the same probe both ways (the real one through `sh -c 'exec "$0" "$@"'`, which the
zygote never serves) and compares. Which way a run went shows in /proc/self/cmdline: a zygote
still carries its bootstrap there (documented in zygote.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tartarus.node.agent_client import AgentClient

AGENT_PY = Path(__file__).resolve().parents[2] / "src" / "tartarus" / "guest" / "agent.py"
GUEST_PYTHON = os.environ.get("TARTARUS_TEST_GUEST_PYTHON") or sys.executable
MARK = "tartarus_boot"  # in a zygote's command line (zygote_start.BOOT)
# `MARK in cmdline` as code that does not itself contain MARK (a real run's cmdline has the code)
IS_ZYGOTE = "('tartarus' + '_boot') in open('/proc/self/cmdline').read()"

# Prints what a `python3 -c` can observe about how it was started, as one JSON line.
PROBE = """\
import sys
modules = sorted(sys.modules)
import json, os
print(json.dumps({
    "argv": sys.argv,
    "orig_argv": getattr(sys, "orig_argv", None),
    "executable": sys.executable,
    "name": __name__,
    "globals": sorted(k for k in globals() if k not in ("json", "os", "modules")),
    "flags": list(sys.flags),
    "path": sys.path,
    "modules": modules,
    "cwd": os.getcwd(),
    "env": {k: v for k, v in os.environ.items() if k.startswith("PROBE_")},
    "own_group": os.getpgid(0) == os.getpid() == os.getsid(0),
    "ppid": os.getppid(),
    "stdin_tty": sys.stdin.isatty(),
    "stdout_encoding": sys.stdout.encoding,
    "zygote": IS_ZYGOTE,
    "hash": hash("tartarus"),
    "urandom": os.urandom(8).hex(),
}))
""".replace("IS_ZYGOTE", IS_ZYGOTE)
VARYING = ("zygote", "hash", "urandom")


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    client: AgentClient
    workdir: Path
    env: dict[str, str]
    contexts: set[int]  # run_code contexts: forks of a zygote, its command line included


def _start(tmp_path: Path, sockdir: str, *extra: str) -> Running:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": f"{os.path.dirname(GUEST_PYTHON)}:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }
    sock = os.path.join(sockdir, "a.sock")
    argv = [GUEST_PYTHON, "-I", "-S", str(AGENT_PY), "--listen", sock, "--workdir", str(workdir)]
    proc = subprocess.Popen([*argv, *extra], env=env)
    return Running(proc, AgentClient(sock, connect_timeout=10), workdir, env, set())


@pytest.fixture
def sockdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="ttz-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _stop(running: Running) -> None:
    if running.proc.poll() is None:
        running.proc.terminate()
        assert running.proc.wait(10) == 0


@pytest.fixture
def agent(tmp_path: Path, sockdir: str) -> Iterator[Running]:
    running = _start(tmp_path, sockdir)
    yield running
    _stop(running)


@pytest.fixture
def preimporting(tmp_path: Path, sockdir: str) -> Iterator[Running]:
    running = _start(tmp_path, sockdir, "--preimport", "decimal,json.decoder,no_such_module")
    yield running
    _stop(running)


def _real(argv: list[str]) -> list[str]:
    """The same command, exec'd by a shell, so the zygote never serves it."""
    return ["sh", "-c", 'exec "$0" "$@"', *argv]


async def _probe(
    running: Running, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None
) -> dict[str, object]:
    r = await running.client.exec(argv, env=env, cwd=cwd)
    assert r.exit_code == 0, r
    result: dict[str, object] = json.loads(r.stdout)
    return result


async def _zygote_ready(running: Running) -> None:
    """Wait until a zygote is up (its pid shows among the agent's children)."""
    deadline = time.monotonic() + 15
    while not _zygote_pids(running):
        assert time.monotonic() < deadline, "no zygote started"
        await asyncio.sleep(0.05)


def _zygote_pids(running: Running) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        pid = int(name)
        if ppid == running.proc.pid and MARK.encode() in cmdline and pid not in running.contexts:
            pids.append(pid)
    return pids


def _same(a: dict[str, object], b: dict[str, object]) -> None:
    assert {k: v for k, v in a.items() if k not in VARYING} == {
        k: v for k, v in b.items() if k not in VARYING
    }


async def test_dash_c_is_served_by_the_zygote_as_if_exec_d(agent: Running) -> None:
    await agent.client.ping()
    await _zygote_ready(agent)
    (agent.workdir / "sub").mkdir()
    argv = [GUEST_PYTHON, "-c", PROBE, "one", "-x", "--two"]
    env = {**agent.env, "PROBE_VAR": "value"}
    warm = await _probe(agent, argv, env, "sub")
    real = await _probe(agent, _real(argv), env, "sub")
    assert warm["zygote"] is True and real["zygote"] is False
    _same(warm, real)
    assert warm["argv"] == ["-c", "one", "-x", "--two"]
    assert warm["name"] == "__main__"
    assert warm["env"] == {"PROBE_VAR": "value"}
    assert warm["cwd"] == str(agent.workdir / "sub")
    assert warm["own_group"] is True and warm["ppid"] == agent.proc.pid
    assert warm["path"][0] == ""  # type: ignore[index]
    # By the name PATH finds it under, too.
    await _zygote_ready(agent)
    by_name = await _probe(agent, [os.path.basename(GUEST_PYTHON), "-c", PROBE], env, "sub")
    assert by_name["zygote"] is True
    real = await _probe(agent, _real([os.path.basename(GUEST_PYTHON), "-c", PROBE]), env, "sub")
    _same(by_name, real)


async def test_every_run_has_fresh_random_state(agent: Running) -> None:
    await _zygote_ready(agent)
    runs = []
    for _ in range(3):
        await _zygote_ready(agent)
        runs.append(await _probe(agent, [GUEST_PYTHON, "-c", PROBE]))
    assert all(run["zygote"] for run in runs)
    assert len({run["urandom"] for run in runs}) == 3
    assert len({run["hash"] for run in runs}) == 3  # a fresh hash secret: no fork shares it


async def test_exit_codes_and_tracebacks(agent: Running) -> None:
    cases = {
        "pass": (0, None),
        "import sys; sys.exit(3)": (3, None),
        "raise SystemExit('bye')": (1, None),
        "def f():\n    1 / 0\nf()": (1, None),
        "x = (": (1, None),
        "raise KeyboardInterrupt": (128 + 2, signal.SIGINT),
        "import os; os.kill(os.getpid(), 9)": (128 + 9, signal.SIGKILL),
        "import atexit; atexit.register(print, 'at exit'); print('body')": (0, None),
    }
    for code, (exit_code, sig) in cases.items():
        await _zygote_ready(agent)
        [zygote] = _zygote_pids(agent)
        warm = await agent.client.exec([GUEST_PYTHON, "-c", code])
        assert not _alive(zygote), f"{code!r} was not run by the zygote"
        real = await agent.client.exec(_real([GUEST_PYTHON, "-c", code]))
        assert (warm.exit_code, warm.signal) == (exit_code, sig), (code, warm)
        assert (real.exit_code, real.signal) == (exit_code, sig), (code, real)
        assert (warm.stdout, warm.stderr) == (real.stdout, real.stderr), code
    await _zygote_ready(agent)
    r = await agent.client.exec([GUEST_PYTHON, "-c", "def f():\n    1 / 0\nf()"])
    lines = r.stderr.decode().splitlines()  # (3.13 adds the source lines)
    assert lines[0] == "Traceback (most recent call last):"
    assert [line for line in lines if line.startswith("  File")] == [
        '  File "<string>", line 3, in <module>',
        '  File "<string>", line 2, in f',
    ]
    assert lines[-1] == "ZeroDivisionError: division by zero"


async def test_stdin_is_the_commands(agent: Running) -> None:
    await _zygote_ready(agent)
    code = f"import sys; print({IS_ZYGOTE}, sys.stdin.read())"
    r = await agent.client.exec([GUEST_PYTHON, "-c", code], stdin=b"fed in")
    assert (r.exit_code, r.stdout) == (0, b"True fed in\n")
    await _zygote_ready(agent)
    r = await agent.client.exec([GUEST_PYTHON, "-c", code])
    assert (r.exit_code, r.stdout) == (0, b"True \n")  # /dev/null, as for any exec


async def test_what_cannot_be_faithful_falls_back(agent: Running) -> None:
    await _zygote_ready(agent)
    mark = f"print({IS_ZYGOTE})"
    for argv, env in [
        ([GUEST_PYTHON, "-c", mark], {"PYTHONHASHSEED": "0"}),  # read at start-up
        ([GUEST_PYTHON, "-c", mark], {"LC_ALL": "C"}),
        ([GUEST_PYTHON, "-c", mark], {"HOME": "/"}),
        ([GUEST_PYTHON, "-I", "-c", mark], {}),  # other flags
        ([GUEST_PYTHON, "-c"], {}),
        (["/bin/sh", "-c", "echo False"], {}),  # not python
    ]:
        await _zygote_ready(agent)
        r = await agent.client.exec(argv, env={**agent.env, **env})
        assert r.stdout in (b"False\n", b""), (argv, env, r)
    r = await agent.client.exec([GUEST_PYTHON, "-c"])
    assert r.exit_code == 2 and b"-c" in r.stderr
    r = await agent.client.exec([GUEST_PYTHON, "-c", mark], env={**agent.env, "PROBE_X": "1"})
    assert r.stdout == b"True\n"  # an ordinary variable is no reason to fall back


async def test_timeout_kills_a_zygote_command(agent: Running) -> None:
    await _zygote_ready(agent)
    code = f"print({IS_ZYGOTE}, flush=True)\n"
    code += "import time; time.sleep(30)"
    t0 = time.monotonic()
    r = await agent.client.exec([GUEST_PYTHON, "-c", code], timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert r.stdout == b"True\n"
    assert r.timed_out and r.signal == signal.SIGKILL and r.exit_code == 128 + 9


async def _ready_zygote(running: Running) -> int:
    """The pid of a zygote that is ready: it just forked a run_code context."""
    code = f"import os; {IS_ZYGOTE}, os.getppid(), os.getpid()"
    r = await running.client.run_code(code, context=f"probe-{time.monotonic()}")
    assert r.value is not None and r.value.startswith(f"(True, {running.proc.pid}, "), r
    running.contexts.add(int(r.value.split(", ")[2].rstrip(")")))
    [pid] = _zygote_pids(running)
    return pid


async def test_a_killed_zygote_is_replaced(agent: Running) -> None:
    old = await _ready_zygote(agent)
    os.kill(old, signal.SIGKILL)
    mark = f"import os; print({IS_ZYGOTE}, os.getpid())"
    r = await agent.client.exec([GUEST_PYTHON, "-c", mark])
    assert r.exit_code == 0  # by the zygote's replacement, or exec'd if it was too early
    await _zygote_ready(agent)
    r = await agent.client.exec([GUEST_PYTHON, "-c", mark])
    warm, pid = r.stdout.split()
    assert warm == b"True" and int(pid) != old
    # A run_code context, too, comes from a new zygote once the old one is gone.
    os.kill(await _ready_zygote(agent), signal.SIGKILL)
    r2 = await agent.client.run_code(f"{IS_ZYGOTE}, __import__('os').getppid()", context="new")
    assert r2.value == f"(True, {agent.proc.pid})"


async def test_run_code_contexts_are_forked_from_the_zygote(agent: Running) -> None:
    code = f"import os; {IS_ZYGOTE}, os.getppid(), os.getpid()"
    first = await agent.client.run_code(code)
    other = await agent.client.run_code(code, context="other")
    assert first.value is not None and other.value is not None
    assert first.value.startswith(f"(True, {agent.proc.pid}, ")
    assert other.value.startswith(f"(True, {agent.proc.pid}, ")
    assert first.value != other.value
    r = await agent.client.run_code("print('live'); import sys; sys.argv, __name__")
    assert (r.stdout, r.value) == ("live\n", "([''], '__main__')")
    # A context that dies is reaped by the agent (it was re-parented to it) and replaced.
    r = await agent.client.run_code("import os; os._exit(7)")
    assert r.error is not None and "exit code 7" in r.error.value
    r = await agent.client.run_code("1 + 1")
    assert r.value == "2"


async def test_preimported_modules_are_there_before_the_first_request(
    preimporting: Running,
) -> None:
    c = preimporting.client
    r = await c.run_code("import sys; 'decimal' in sys.modules, 'json.decoder' in sys.modules")
    assert r.value == "(True, True)"
    await _zygote_ready(preimporting)
    code = f"import sys; print({IS_ZYGOTE}, 'decimal' in sys.modules, '_socket' in sys.modules)"
    deadline = time.monotonic() + 10
    while True:  # with pre-imports a command does not wait for a starting zygote
        done = await c.exec([GUEST_PYTHON, "-c", code])
        if done.stdout.startswith(b"True") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert done.stdout == b"True True False\n"  # the zygote's own modules are gone
    # A file that could shadow a pre-imported module sends the command down the normal path.
    (preimporting.workdir / "decimal.py").write_text("")
    await _zygote_ready(preimporting)
    await asyncio.sleep(0.5)
    final = await c.exec([GUEST_PYTHON, "-c", code])
    assert final.stdout == b"False False False\n"


async def test_sigterm_kills_the_zygote_and_its_contexts(agent: Running) -> None:
    r = await agent.client.run_code("import os; os.getpid()")
    assert r.value is not None
    context = int(r.value)
    await _zygote_ready(agent)
    zygotes = _zygote_pids(agent)
    agent.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(agent.proc.wait, 5) == 0
    for pid in [context, *zygotes]:
        deadline = time.monotonic() + 5
        while _alive(pid):
            assert time.monotonic() < deadline, f"pid {pid} survived the agent"
            await asyncio.sleep(0.02)


def _alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"
