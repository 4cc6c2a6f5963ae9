"""Helpers shared by the seccomp tests and the hostile-workload suite: the runtimes to attack,
running a command in a sandbox through the engine, and a syscall probe."""

from __future__ import annotations

import pytest

from tartarus.config import Settings
from tartarus.node.engine import Engine
from tartarus.runtimes.registry import RuntimeRegistry
from tests.conftest import REQUIRED

HOSTILE_RUNTIMES = ("crun", "runc", "gvisor", "microvm")
_WORKS: dict[str, tuple[bool, str]] = {}

# Calls a syscall per name from inside the sandbox and prints {name: errno} (0: it worked).
PROBE = r"""
import ctypes, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    ctypes.set_errno(0)
    return ctypes.get_errno() if libc.syscall(nr, *args) == -1 else 0
def sock(family, kind):
    try:
        socket.socket(family, kind).close()
        return 0
    except OSError as e:
        return e.errno
out = {
    "ptrace": call(101, 16, 1, 0, 0),  # PTRACE_ATTACH to pid 1
    "unshare_user": call(272, 0x10000000),
    "clone_newns": call(56, 0x00020000 | 17, 0, 0, 0, 0),
    "keyctl": call(250, 0, 0, 0, 0),  # KEYCTL_GET_KEYRING_ID
    "bpf": call(321, 0, 0, 0),
    "io_uring": call(425, 1, ctypes.create_string_buffer(120)),
    "personality": call(135, 0x0040000),  # ADDR_NO_RANDOMIZE
    "netlink": sock(16, socket.SOCK_RAW),
    "packet": sock(17, socket.SOCK_RAW),
    "inet": sock(socket.AF_INET, socket.SOCK_STREAM),
    "unix": sock(socket.AF_UNIX, socket.SOCK_STREAM),
}
print(json.dumps(out))
"""


async def gvisor_or_skip(name: str) -> None:
    """Skip (or, when CI requires it, fail) on a runtime that does not work here."""
    if name not in _WORKS:
        result = await RuntimeRegistry(Settings().state_dir).probe(name)
        _WORKS[name] = (result.works, f"{result.reason} {result.hint}".strip())
    works, why = _WORKS[name]
    if not works:
        if name in REQUIRED:
            pytest.fail(f"{name} does not work here: {why}")
        pytest.skip(f"{name} does not work here: {why}")


async def exec_out(
    engine: Engine, sid: str, *argv: str, timeout: float = 60, check: bool = True
) -> str:
    """stdout of `argv` in the sandbox; with `check`, a non-zero exit fails the test."""
    out: list[bytes] = []
    err: list[bytes] = []

    async def so(b: bytes) -> None:
        out.append(b)

    async def se(b: bytes) -> None:
        err.append(b)

    r = await engine.exec(sid, list(argv), on_stdout=so, on_stderr=se, timeout=timeout)
    if check:
        assert r.exit_code == 0, (r, b"".join(err).decode(errors="replace"))
    return b"".join(out).decode(errors="replace")
