"""Seccomp profiles (Typhon) in OCI form, applied by the runtime itself.

The default profile is a deny-list: everything a normal program needs keeps working, while
the syscalls behind most container escapes and kernel attack surface fail with EPERM
(mounting, new namespaces, kernel modules, keyrings, BPF, ptrace of other processes'
memory, userfaultfd, clock changes, reboot). clone3 answers ENOSYS so libc falls back to
clone, whose namespace flags we can inspect (clone3 passes them in memory, out of reach).
"""

from __future__ import annotations

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


def default_profile() -> dict[str, Any]:
    syscalls: list[dict[str, Any]] = [
        {"names": sorted(set(DENIED_SYSCALLS)), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    ]
    for flag in _CLONE_NS_FLAGS:
        syscalls.append(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        )
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    }
