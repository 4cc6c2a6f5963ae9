"""Seccomp profiles (Typhon) in OCI form, applied by the runtime itself.

The default profile is a deny-list: everything a normal program needs keeps working, while
the syscalls behind most container escapes and kernel attack surface fail with EPERM
(mounting, new namespaces, kernel modules, keyrings, BPF, ptrace of other processes'
memory, userfaultfd, clock changes, reboot). clone3 answers ENOSYS so libc falls back to
clone, whose namespace flags we can inspect (clone3 passes them in memory, out of reach).

`strict` (the quarantine profile) denies more attack surface that ordinary programs do not
use: io_uring, personality changes, pidfd_getfd, NUMA page moves, vmsplice, TIOCSTI and
sockets of any family but unix, inet and inet6. Allow-list profiles (`allowlist_profile`)
are what `tartarus seccomp generate` writes: only the syscalls a traced command used.

gVisor (runsc 20221219, `--oci-seccomp`) applies these inside its sentry but ignores
`errnoRet`: every denial is EPERM. Our clone3 → ENOSYS rule thus became EPERM, which glibc
does not fall back from, and no thread could start. The sentry implements no clone3 at all
(it answers ENOSYS itself), so `for_gvisor` lets clone3 through to it instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

EPERM = 1
ENOSYS = 38

# CLONE_NEW* flags: cgroup, uts, ipc, user, pid, net, mount.
_CLONE_NS_FLAGS = (
    0x02000000,
    0x04000000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
    0x00020000,
)

DENIED_SYSCALLS = (
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    "adjtimex",
    "fanotify_init",
    "open_by_handle_at",
)


# What `strict` denies on top of the default list.
STRICT_DENIED_SYSCALLS = (
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "pidfd_getfd",
    "mbind",
    "migrate_pages",
    "move_pages",
    "set_mempolicy",
    "vmsplice",
    "modify_ldt",
    "sysfs",
    "_sysctl",
    "memfd_secret",
)
# What the guest agent and any process need to start, serve and end, for allow-lists: the
# trace starts after the agent did, and the runtime's last steps before exec run under it.
ALWAYS_ALLOWED = frozenset(
    [
        "accept",
        "accept4",
        "access",
        "arch_prctl",
        "bind",
        "brk",
        "capget",
        "capset",
        "chdir",
        "clock_getres",
        "clock_gettime",
        "clock_nanosleep",
        "clone",
        "close",
        "close_range",
        "connect",
        "dup",
        "dup2",
        "dup3",
        "epoll_create",
        "epoll_create1",
        "epoll_ctl",
        "epoll_pwait",
        "epoll_wait",
        "eventfd2",
        "execve",
        "exit",
        "exit_group",
        "faccessat",
        "faccessat2",
        "fadvise64",
        "fchdir",
        "fchmod",
        "fchown",
        "fcntl",
        "fstat",
        "fstatfs",
        "fsync",
        "ftruncate",
        "futex",
        "getcwd",
        "getdents64",
        "getegid",
        "geteuid",
        "getgid",
        "getgroups",
        "getpeername",
        "getpgid",
        "getpgrp",
        "getpid",
        "getppid",
        "getrandom",
        "getresgid",
        "getresuid",
        "getrlimit",
        "getrusage",
        "getsid",
        "getsockname",
        "getsockopt",
        "gettid",
        "gettimeofday",
        "getuid",
        "ioctl",
        "kill",
        "listen",
        "lseek",
        "lstat",
        "madvise",
        "mkdir",
        "mkdirat",
        "mmap",
        "mprotect",
        "mremap",
        "munmap",
        "nanosleep",
        "newfstatat",
        "open",
        "openat",
        "pipe",
        "pipe2",
        "poll",
        "ppoll",
        "prctl",
        "pread64",
        "prlimit64",
        "pselect6",
        "pwrite64",
        "read",
        "readlink",
        "readlinkat",
        "readv",
        "recvfrom",
        "recvmsg",
        "rename",
        "renameat",
        "renameat2",
        "restart_syscall",
        "rmdir",
        "rseq",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "rt_sigsuspend",
        "rt_sigtimedwait",
        "sched_getaffinity",
        "sched_yield",
        "select",
        "sendmsg",
        "sendto",
        "set_robust_list",
        "set_tid_address",
        "setgid",
        "setgroups",
        "setpgid",
        "setresgid",
        "setresuid",
        "setsid",
        "setsockopt",
        "setuid",
        "shutdown",
        "sigaltstack",
        "socket",
        "socketpair",
        "stat",
        "statfs",
        "statx",
        "sysinfo",
        "tgkill",
        "time",
        "tkill",
        "umask",
        "uname",
        "unlink",
        "unlinkat",
        "utimensat",
        "vfork",
        "wait4",
        "waitid",
        "write",
        "writev",
    ]
)
ARCHITECTURES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
TIOCSTI = 0x5412


def _errno_if(name: str, index: int, op: str, value: int, two: int = 0) -> dict[str, Any]:
    arg = {"index": index, "value": value, "op": op}
    if op == "SCMP_CMP_MASKED_EQ":
        arg["valueTwo"] = two
    return {"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM, "args": [arg]}


def _clone_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}
    ]
    for flag in _CLONE_NS_FLAGS:
        rules.append(_errno_if("clone", 0, "SCMP_CMP_MASKED_EQ", flag, flag))
    return rules


def default_profile() -> dict[str, Any]:
    syscalls: list[dict[str, Any]] = [
        {"names": sorted(set(DENIED_SYSCALLS)), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        *_clone_rules(),
    ]
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ARCHITECTURES, "syscalls": syscalls}


def strict_profile() -> dict[str, Any]:
    """The default plus `STRICT_DENIED_SYSCALLS`, other socket families, every personality but
    PER_LINUX (0; with an allow-by-default profile the 0xffffffff query cannot be told apart
    from flag changes, so it is refused too) and TIOCSTI (typing into another tty)."""
    profile = default_profile()
    rules: list[dict[str, Any]] = profile["syscalls"]
    rules.append(
        {"names": sorted(STRICT_DENIED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}
    )
    # one comparison per argument and rule (libseccomp): deny every family but 1, 2 and 10
    for family in (0, *range(AF_INET + 1, AF_INET6)):
        rules.append(_errno_if("socket", 0, "SCMP_CMP_EQ", family))
    rules.append(_errno_if("socket", 0, "SCMP_CMP_GT", AF_INET6))
    rules.append(_errno_if("personality", 0, "SCMP_CMP_GT", 0))
    rules.append(_errno_if("ioctl", 1, "SCMP_CMP_MASKED_EQ", TIOCSTI, 0xFFFFFFFF))
    return profile


def allowlist_profile(names: Iterable[str]) -> dict[str, Any]:
    """Only `names` (plus what every process needs to start and end) are allowed; anything
    else fails with EPERM. The namespace flags of clone stay denied, clone3 answers ENOSYS."""
    allowed = sorted((set(names) | ALWAYS_ALLOWED) - set(DENIED_SYSCALLS) - {"clone3"})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ARCHITECTURES,
        "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"}, *_clone_rules()],
    }


def for_gvisor(profile: dict[str, Any]) -> dict[str, Any]:
    """`profile` as gVisor must get it (see the module docstring): clone3 reaches the sentry,
    which answers ENOSYS itself."""
    rules = [r for r in profile.get("syscalls", []) if r.get("names") != ["clone3"]]
    if profile.get("defaultAction") != "SCMP_ACT_ALLOW":
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ALLOW"})
    out = {k: v for k, v in profile.items() if k != "defaultErrnoRet"}
    out["syscalls"] = rules
    return out
