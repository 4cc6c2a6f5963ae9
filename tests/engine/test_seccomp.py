"""Typhon's seccomp profiles applied for real, on crun, runc and gVisor (`--oci-seccomp`).

Each case starts a sandbox with a named profile and calls syscalls from inside: the denied
ones must fail with EPERM, while threads, fork/exec and the zygote's `run_code` still work
(under gVisor our old profile broke thread creation: see runtimes/seccomp.py).
"""

from __future__ import annotations

import json

import pytest

from tartarus.errors import InvalidRequestError, TartarusError
from tartarus.models import SandboxSpec, SandboxState
from tartarus.node import seccomp_trace
from tartarus.node.engine import Engine
from tartarus.runtimes.seccomp import allowlist_profile
from tests.api.conftest import ApiServer, api_server  # noqa: F401
from tests.engine.helpers import run
from tests.hostile.probe import PROBE, exec_out, gvisor_or_skip
from tests.sdk.conftest import make_tenant

EPERM = 1

ALL = pytest.mark.parametrize("rt", ["crun", "runc", "gvisor", "microvm"])
TRACEABLE = pytest.mark.parametrize("rt", ["crun", "runc"])


async def _probe(engine: Engine, sid: str) -> dict[str, int]:
    out = await exec_out(engine, sid, "python3", "-c", PROBE)
    result: dict[str, int] = json.loads(out)
    return result


async def _works(engine: Engine, sid: str) -> None:
    """Threads, fork + exec and the interpreter forked from the zygote."""
    code = "import threading, subprocess\n"
    code += "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
    code += "print(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout)\n"
    out = await exec_out(engine, sid, "python3", "-c", code)
    assert out.split() == ["thread", "child"]
    assert (await engine.agent(sid).run_code("6 * 7")).value == "42"


@ALL
async def test_default_profile(engine: Engine, rt: str, runtime_ok: None) -> None:
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=60))
    try:
        await _works(engine, sb.id)
        errs = await _probe(engine, sb.id)
        for name in ("ptrace", "unshare_user", "keyctl", "bpf", "clone_newns"):
            assert errs[name] == EPERM, (name, errs)
        # strict only (gVisor's sentry refuses this personality itself, with EINVAL)
        assert errs["netlink"] == 0 and errs["personality"] != EPERM, errs
    finally:
        await engine.kill(sb.id)


@ALL
async def test_strict_profile(engine: Engine, rt: str, runtime_ok: None) -> None:
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=60, seccomp="strict"))
    try:
        await _works(engine, sb.id)
        errs = await _probe(engine, sb.id)
        for name in ("ptrace", "unshare_user", "io_uring", "netlink", "personality", "packet"):
            assert errs[name] == EPERM, (name, errs)
        assert errs["inet"] == 0 and errs["unix"] == 0, errs
    finally:
        await engine.kill(sb.id)


@ALL
async def test_saved_allowlist_profile(engine: Engine, rt: str, runtime_ok: None) -> None:
    """A stored allow-list without `times`: the agent serves, `times()` is refused."""
    engine.seccomp.save("no-times", allowlist_profile(["newfstatat", "getdents64"]))
    sb = await engine.create(SandboxSpec(runtime=rt, timeout=60, seccomp="no-times"))
    try:
        await _works(engine, sb.id)
        code = "import ctypes\nl = ctypes.CDLL(None, use_errno=True)\n"
        code += "print(l.syscall(100, 0), ctypes.get_errno())"  # times(NULL)
        assert (await exec_out(engine, sb.id, "python3", "-c", code)).split() == ["-1", "1"]
    finally:
        await engine.kill(sb.id)
        engine.seccomp.delete("no-times")


@ALL
async def test_unknown_profile_is_rejected(engine: Engine, rt: str, runtime_ok: None) -> None:
    before = {s.id for s in engine.list()}
    with pytest.raises(InvalidRequestError, match="unknown seccomp profile 'nope'"):
        await engine.create(SandboxSpec(runtime=rt, seccomp="nope"))
    with pytest.raises(InvalidRequestError, match="seccomp profile name"):
        await engine.create(SandboxSpec(runtime=rt, seccomp="../etc/passwd"))
    assert {s.id for s in engine.list()} == before  # no record left behind


@ALL
def test_cli_seccomp_flag(rt: str, runtime_ok: None) -> None:
    r = run(
        rt, "python3", "-c", "import socket; socket.socket(16, 3)", opts=("--seccomp", "strict")
    )
    assert r.returncode == 1 and b"PermissionError" in r.stderr, r
    bad = run(rt, "true", opts=("--seccomp", "nope"))
    assert bad.returncode == 2 and bad.stderr.decode().startswith("error: unknown seccomp"), bad


@pytest.fixture
async def runtime_ok(engine: Engine, rt: str) -> None:
    await gvisor_or_skip(rt)


@ALL
async def test_generate_traces_the_command(engine: Engine, rt: str, runtime_ok: None) -> None:
    """`seccomp generate` on crun/runc: the profile lets the traced command (and the agent)
    run on every runtime, and refuses a syscall the command never made."""
    if rt in ("gvisor", "microvm"):  # the host's strace sees no guest syscall: refused
        with pytest.raises(InvalidRequestError, match=f"cannot trace on {rt}"):
            await seccomp_trace.generate(
                engine, "g", ["true"], runtime=rt, on_stdout=_ignore, on_stderr=_ignore
            )
        return
    code = "import json, os; print(json.dumps(sorted(os.listdir('/etc'))[:2]))"
    made = await seccomp_trace.generate(
        engine,
        f"gen-{rt}",
        ["python3", "-c", code],
        runtime=rt,
        on_stdout=_ignore,
        on_stderr=_ignore,
    )
    try:
        assert made.result.exit_code == 0
        assert {"openat", "getdents64", "write"} <= made.traced and "times" not in made.traced
        assert made.path.is_file()
        for target in (rt, "gvisor", "microvm"):
            await gvisor_or_skip(target)
            sb = await engine.create(SandboxSpec(runtime=target, timeout=60, seccomp=made.name))
            try:
                assert (await exec_out(engine, sb.id, "python3", "-c", code)).startswith("[")
                times = "import ctypes\nl = ctypes.CDLL(None, use_errno=True)\n"
                times += "print(l.syscall(100, 0), ctypes.get_errno())"
                out = await exec_out(engine, sb.id, "python3", "-c", times)
                assert out.split() == ["-1", "1"], (target, out)
            finally:
                await engine.kill(sb.id)
    finally:
        engine.seccomp.delete(made.name)


@TRACEABLE
async def test_generate_refuses_a_failing_command(
    engine: Engine, rt: str, runtime_ok: None
) -> None:
    before = {s.id for s in engine.list(states=[SandboxState.RUNNING])}
    with pytest.raises(TartarusError, match="exit 3"):
        await seccomp_trace.generate(
            engine,
            "fails",
            ["sh", "-c", "exit 3"],
            runtime=rt,
            on_stdout=_ignore,
            on_stderr=_ignore,
        )
    assert not (engine.seccomp.dir / "fails.json").exists()
    assert {s.id for s in engine.list(states=[SandboxState.RUNNING])} == before


async def _ignore(_: bytes) -> None:
    return None


def test_sdk_and_api_seccomp(api_server: ApiServer) -> None:  # noqa: F811
    """`Sandbox.create(seccomp=...)` through a real server: applied, or a 400 for a bad name."""
    from tartarus.sdk import Sandbox
    from tartarus.sdk.errors import InvalidRequestError as SdkInvalidRequest

    _, key = make_tenant(api_server)
    with Sandbox.create(seccomp="strict", timeout=60, url=api_server.url, api_key=key) as sb:
        r = sb.commands.run("python3 -c 'import socket; socket.socket(16, 3)'")
        assert r.exit_code == 1 and "PermissionError" in r.stderr
        assert sb.commands.run("echo ok").stdout == "ok\n"
    with pytest.raises(SdkInvalidRequest, match="unknown seccomp profile 'nope'"):
        Sandbox.create(seccomp="nope", url=api_server.url, api_key=key)
