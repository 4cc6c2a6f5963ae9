"""Memory per sandbox as the kernel accounts it: the sum of PSS over its processes.

PSS (proportional set size) splits every shared page among the processes mapping it, so
sandboxes that share the template's read-only pages (the interpreter, libc) are charged their
share only, and the sum over all sandboxes is what the host really spends. The processes of
a sandbox are the members of its memory cgroup (`tartarus/<id>`, see `runtimes/cgroups.py`).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

from tartarus.bench.floors import HOST_PYTHON
from tartarus.runtimes.bundle import CGROUP_PARENT
from tartarus.runtimes.cgroups import CGROUP_ROOT

KIB_PER_MIB = 1024


def memory_cgroup(sandbox_id: str) -> Path:
    v1 = CGROUP_ROOT / "memory" / CGROUP_PARENT / sandbox_id
    return v1 if v1.is_dir() else CGROUP_ROOT / CGROUP_PARENT / sandbox_id


def cgroup_pids(sandbox_id: str) -> set[int]:
    """Every process in the sandbox's memory cgroup, sub-cgroups included."""
    base = memory_cgroup(sandbox_id)
    found: set[int] = set()
    for procs in base.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            found.update(int(p) for p in procs.read_text().split())
    return found


def pss_kib(pid: int) -> int:
    """The process' PSS in KiB from /proc/PID/smaps_rollup (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def sandbox_pss_mib(sandbox_id: str) -> float:
    pids = cgroup_pids(sandbox_id)
    if not pids:
        raise RuntimeError(f"sandbox {sandbox_id} has no processes in {memory_cgroup(sandbox_id)}")
    return sum(pss_kib(p) for p in pids) / KIB_PER_MIB


def host_idle_python_pss_mib(count: int, settle_s: float = 0.5) -> list[float]:
    """PSS of `count` idle host python3 processes running side by side (the floor: what an
    idle interpreter costs with no sandbox around it)."""
    procs = [
        subprocess.Popen(
            [HOST_PYTHON, "-c", "import sys; sys.stdin.read()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        time.sleep(settle_s)  # let each finish starting up
        return [pss_kib(p.pid) / KIB_PER_MIB for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(OSError):
                if p.stdin is not None:
                    p.stdin.close()
            p.kill()
            p.wait()
