"""The cgroup "shadows" runtimes leave under the hidden cgroup2 mount point (see
runtimes/hostns.py): an engine's start removes those of containers that have ended."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from tartarus.node.engine import Engine
from tartarus.node.reconcile import reconcile
from tartarus.runtimes import hostns
from tartarus.runtimes.bundle import CGROUP_PARENT

NO_SUCH_PID = 1 << 30  # above any pid_max


def _shadow(name: str, pid: int, age_s: float) -> Path:
    path = Path(hostns.UNIFIED) / CGROUP_PARENT / name
    path.mkdir(parents=True)
    (path / "cgroup.procs").write_text(f"{pid}\n")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


async def test_shadows_of_ended_containers_are_swept(engine: Engine) -> None:
    assert hostns.entered()  # the engine's thread, where the shadows are visible
    ended = _shadow("sb-shadowtest01", NO_SUCH_PID, 600)
    running = _shadow("sb-shadowtest02", os.getpid(), 600)
    starting = _shadow("sb-shadowtest03", NO_SUCH_PID, 0)  # its runtime may be mid-create
    try:
        await reconcile(engine)
        assert not ended.exists()
        assert running.exists() and starting.exists()
    finally:
        for path in (ended, running, starting):
            shutil.rmtree(path, ignore_errors=True)
