"""Which engine process owns a sandbox, and whether that process still lives.

A pid alone is not an identity (pids are reused), so an owner is "pid:start-time" read from
/proc; a reaper may act on a sandbox only when that exact process is gone.
"""

from __future__ import annotations

import os


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    return stat.rsplit(")", 1)[1].split()[19]


def current() -> str:
    pid = os.getpid()
    return f"{pid}:{_start_time(pid)}"


def alive(owner: str | None) -> bool:
    if not owner or ":" not in owner:
        return False
    pid, start = owner.split(":", 1)
    return pid.isdigit() and _start_time(int(pid)) == start
