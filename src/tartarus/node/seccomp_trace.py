"""Generating an allow-list seccomp profile by tracing a command in a real sandbox (Typhon).

The sandbox is started first, then the host's strace attaches (`-f`, summary mode) to every
process in its cgroup: the guest agent, its zygote and whatever they fork afterwards, so the
command's children are followed and the runtime's own syscalls (it is gone by then) never
reach the profile. The command runs through the agent as any exec does; when it ends,
strace detaches and prints its table of syscalls. The profile allows those plus what every
process and the agent need (`seccomp.ALWAYS_ALLOWED`); anything else fails with EPERM.

Only runtimes whose guest syscalls are host syscalls can be traced this way: under gVisor
the host sees the sentry's syscalls, in a microVM none at all. The profile it writes works
on every runtime (gVisor gets it through `seccomp.for_gvisor`, a VM compiled to BPF).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tartarus.errors import InvalidRequestError, RuntimeUnavailableError, TartarusError
from tartarus.models import ExecResult, SandboxSpec
from tartarus.runtimes import cgroups, reaper
from tartarus.runtimes.bundle import CGROUP_PARENT
from tartarus.runtimes.seccomp import allowlist_profile
from tartarus.runtimes.seccomp_profiles import BUILTIN

if TYPE_CHECKING:
    from tartarus.node.agent_client import OutputCallback
    from tartarus.node.engine import Engine

ATTACH_TIMEOUT_S = 10.0
UNTRACEABLE = {
    "gvisor": "gVisor's guest syscalls are handled by its sentry, not the host",
    "microvm": "a VM's guest syscalls are its own kernel's, not the host's",
}
_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+\d+\s+(?:\d+\s+)?([a-z0-9_]+)\s*$")


@dataclass(frozen=True)
class Generated:
    name: str
    path: Path
    traced: frozenset[str]  # what the command (and the agent serving it) called
    allowed: int  # syscall names the profile allows
    result: ExecResult


async def generate(
    engine: Engine,
    name: str,
    argv: list[str],
    *,
    template: str = "python",
    runtime: str | None = None,
    timeout: float = 120.0,
    on_stdout: OutputCallback,
    on_stderr: OutputCallback,
) -> Generated:
    """Trace `argv` in a new sandbox and save an allow-list profile `name` for it."""
    if name in BUILTIN:
        raise InvalidRequestError(f"{name!r} is a built-in seccomp profile")
    engine.seccomp.check_name(name)
    strace = shutil.which("strace")
    if strace is None:
        raise RuntimeUnavailableError("strace is not installed (apt-get install strace)")
    chosen = await engine.runtimes.select(runtime or engine.settings.default_runtime)
    if chosen.name in UNTRACEABLE:
        raise InvalidRequestError(
            f"cannot trace on {chosen.name}: {UNTRACEABLE[chosen.name]}; use crun or runc"
        )
    sandbox = await engine.create(
        SandboxSpec(template=template, runtime=chosen.name, timeout=timeout + 30)
    )
    try:
        with tempfile.TemporaryDirectory(prefix="trace-") as work:
            table = Path(work) / "summary"
            await _zygote_settled(engine, sandbox.id)
            tracer = await _attach(strace, table, cgroups.pids(CGROUP_PARENT, sandbox.id))
            try:
                result = await engine.exec(
                    sandbox.id, argv, on_stdout=on_stdout, on_stderr=on_stderr, timeout=timeout
                )
            finally:
                with contextlib.suppress(ProcessLookupError):
                    tracer.send_signal(signal.SIGINT)  # detach and write the table
                await tracer.wait()
            traced = parse_summary(table.read_text())
    finally:
        await engine.kill(sandbox.id, reason="seccomp trace done")
    if result.exit_code != 0 or result.timed_out or result.error:
        what = result.error or ("timed out" if result.timed_out else f"exit {result.exit_code}")
        raise TartarusError(f"the traced command failed ({what}): no profile written")
    if not traced:
        raise RuntimeUnavailableError("strace recorded no syscalls: nothing to build on")
    profile = allowlist_profile(traced)
    path = engine.seccomp.save(name, profile)
    return Generated(name, path, frozenset(traced), len(profile["syscalls"][0]["names"]), result)


async def _zygote_settled(engine: Engine, sandbox_id: str) -> None:
    """Until the agent's Python zygote is up (or off): one started while strace attaches
    would be missed, and a `python3 -c` forked from it not traced at all."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ATTACH_TIMEOUT_S
    while (await engine.agent(sandbox_id).ping()).get("zygote") == "starting":
        if loop.time() > deadline:
            return
        await asyncio.sleep(0.05)


async def _attach(strace: str, table: Path, pids: set[int]) -> asyncio.subprocess.Process:
    """strace attached to `pids` (and their future children); returns once it holds them."""
    if not pids:
        raise RuntimeUnavailableError("the sandbox has no process to trace")
    argv = [strace, "-f", "-c", "-o", str(table)]
    for pid in sorted(pids):
        argv += ["-p", str(pid)]
    proc = await reaper.spawn(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ATTACH_TIMEOUT_S
    while not all(_traced(pid) for pid in pids):
        if proc.returncode is not None or loop.time() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RuntimeUnavailableError("strace could not attach to the sandbox's processes")
        await asyncio.sleep(0.02)
    return proc


def _traced(pid: int) -> bool:
    """Whether `pid` has a tracer (or is gone: nothing left to wait for)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    for line in status.splitlines():
        if line.startswith("TracerPid:"):
            return line.split()[1] != "0"
    return False


def parse_summary(text: str) -> set[str]:
    """Syscall names from strace's `-c` table (`% time  seconds  usecs/call  calls  errors
    syscall`; the errors column is empty when there were none)."""
    names: set[str] = set()
    for line in text.splitlines():
        m = _ROW.match(line)
        if m and m.group(1) != "total":
            names.add(m.group(1))
    return names
