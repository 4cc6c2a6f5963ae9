"""Runs last: after the whole suite, nothing of ours is left on the host."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
        if 100000 <= int(uid_line.split()[1]) < 165536:
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
