"""An OCI seccomp profile compiled to the BPF program the kernel runs, with the host's
libseccomp (what crun and runc use for the same profiles).

For a runtime that cannot apply a profile itself: a microVM's guest has its own kernel and
no runtime of ours inside, so the engine's profile reaches the guest as this program, and
its init installs it on the guest agent before exec (guest/serial.py), exactly where a
container runtime installs it on a container's init. Only the host's native architecture
is compiled in: a syscall through another ABI (int 0x80, x32) kills the process, as
libseccomp's default for a foreign architecture.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
import tempfile
from typing import Any

from tartarus.errors import InvalidRequestError, RuntimeUnavailableError

ACT_KILL_PROCESS, ACT_ERRNO, ACT_ALLOW, ACT_LOG = 0x80000000, 0x00050000, 0x7FFF0000, 0x7FFC0000
OPS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
EPERM = 1


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@functools.cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp")
    if name is None:
        raise RuntimeUnavailableError("no libseccomp (apt-get install libseccomp2)")
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _action(name: str, errno: int | None) -> int:
    if name == "SCMP_ACT_ALLOW":
        return ACT_ALLOW
    if name == "SCMP_ACT_ERRNO":
        return ACT_ERRNO | ((EPERM if errno is None else errno) & 0xFFFF)
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS"):
        return ACT_KILL_PROCESS
    if name == "SCMP_ACT_LOG":
        return ACT_LOG
    raise InvalidRequestError(f"seccomp action {name!r} is not supported in a guest")


def compile_profile(profile: dict[str, Any]) -> bytes:
    """The BPF program (struct sock_filter[]) of `profile`."""
    return _compile(json.dumps(profile, sort_keys=True))


@functools.lru_cache(maxsize=16)
def _compile(text: str) -> bytes:
    profile = json.loads(text)
    lib = _lib()
    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise RuntimeUnavailableError("libseccomp could not start a filter")
    try:
        for rule in profile.get("syscalls", []):
            action = _action(rule["action"], rule.get("errnoRet"))
            if action == default:
                continue  # libseccomp refuses a rule that changes nothing
            args = rule.get("args") or []
            cmps = (_ArgCmp * max(len(args), 1))()
            for i, arg in enumerate(args):
                cmps[i] = _ArgCmp(
                    arg["index"], OPS[arg["op"]], arg["value"], arg.get("valueTwo", 0)
                )
            for name in rule["names"]:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr < 0:
                    continue  # not a syscall of this architecture (as runc skips it)
                rc = lib.seccomp_rule_add_array(ctx, action, nr, len(args), cmps)
                if rc != 0:
                    raise InvalidRequestError(
                        f"seccomp rule for {name} cannot be compiled: {os.strerror(-rc)}"
                    )
        with tempfile.TemporaryFile() as out:
            rc = lib.seccomp_export_bpf(ctx, out.fileno())
            if rc != 0:
                raise RuntimeUnavailableError(f"libseccomp could not export: {os.strerror(-rc)}")
            out.seek(0)
            return out.read()
    finally:
        lib.seccomp_release(ctx)
