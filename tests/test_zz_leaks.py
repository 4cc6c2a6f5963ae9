"""Runs last: after the whole suite, nothing of ours is left on the host."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tartarus.runtimes.bundle import QEMU_UID
from tests.api.conftest import reap_orphans
from tests.conftest import STATE_DIR


def _mount_lines(pid: str) -> list[str]:
    return [
        line
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if "tartarus-" in line or str(STATE_DIR) in line
    ]


def test_no_mounts_left() -> None:
    assert _mount_lines("self") == []
    assert _mount_lines("1") == []


def test_no_cgroups_left() -> None:
    left = [str(p) for p in Path("/sys/fs/cgroup").glob("*/tartarus/*") if p.is_dir()]
    assert left == []
    # what runtimes write beneath the cgroup2 mount point is only visible with it unmounted
    shadow = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "umount /sys/fs/cgroup/unified 2>/dev/null;"
            " ls /sys/fs/cgroup/unified/tartarus 2>/dev/null",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert [name for name in shadow if not name.startswith("cgroup.")] == []


def test_no_sandbox_processes_left() -> None:
    # This pytest process is a subreaper (its in-process engines are), so the inits of
    # sandboxes that CLI subprocesses created and other engines killed end as its zombies:
    # collect those first. A process that still runs is a leak and fails below.
    reap_orphans()
    stray = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid_line = next(x for x in status.read_text().splitlines() if x.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        uid = int(uid_line.split()[1])
        if 100000 <= uid < 165536 or uid == QEMU_UID:  # a container's, or a microVM's QEMU
            cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ")
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
            stray.append(
                f"{status.parent.name} {fields.get('Name')} state={fields.get('State')}"
                f" ppid={fields.get('PPid')}: {cmdline.decode(errors='replace')}"
            )
    assert stray == []


def test_no_containers_or_sandbox_dirs_left() -> None:
    microvms = STATE_DIR / "runtime" / "microvm"
    assert [p.name for p in microvms.glob("sb-*")] == []  # a VM's sockets, disk, RAM file
    for name in ("crun", "runc"):
        root = STATE_DIR / "runtime" / name
        if root.exists():
            out = subprocess.run(
                [name, "--root", str(root), "list", "-q"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert out.split() == []
    sandboxes = STATE_DIR / "sandboxes"
    assert not sandboxes.exists() or list(sandboxes.iterdir()) == []


def test_no_test_network_namespaces_left() -> None:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert [line for line in out.splitlines() if line.startswith("tt-")] == []


def test_no_sandbox_networks_left() -> None:
    """Styx: no sandbox veth, netns, nftables table or address allocation survives."""
    from tartarus.node import network

    assert [p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith("tsb")] == []
    assert [p.name for p in network.NETNS_DIR.glob("tsb-*")] == []
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert [t for t in tables.split() if t.startswith("tsb_")] == []
    slots = network.net_dir() / "slots"
    assert not slots.exists() or [p.read_text() for p in slots.iterdir()] == []
