"""Resource limits are enforced by the kernel and reported for what they are."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.engine.helpers import run

FORK_COUNTER = """
import os, time
n = 0
pids = []
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(2)
        os._exit(0)
    pids.append(pid)
    n += 1
print("forked", n, flush=True)
"""


@pytest.mark.runtimes(
    "crun",
    "runc",
    "gvisor",
    why="microvm: at least 128 MiB, and the guest's own OOM killer: tests/microvm",
)
def test_memory_limit_is_an_oom_kill(runtime: str) -> None:
    proc = run(
        runtime,
        "python3",
        "-c",
        "b = bytearray(300 * 1024 * 1024); print('survived')",
        opts=("--memory", "64"),
    )
    assert proc.returncode == 137, proc.stderr
    assert b"survived" not in proc.stdout
    assert b"out of memory" in proc.stderr


def test_pids_limit_caps_forks(runtime: str) -> None:
    proc = run(runtime, "python3", "-c", FORK_COUNTER, opts=("--pids", "32"))
    assert proc.returncode == 0, proc.stderr
    forked = int(proc.stdout.split()[1])
    assert 0 < forked < 32


@pytest.mark.runtimes(
    "crun",
    "runc",
    "gvisor",
    why="microvm: the bomb starves its guest agent too (RLIMIT_NPROC): tests/microvm",
)
def test_fork_bomb_is_contained_and_host_stays_responsive(runtime: str) -> None:
    bomb = subprocess.Popen(
        _run_argv(
            runtime,
            "sh",
            "-c",
            # the bomb in a subshell: dash exits (2) when a fork of its own fails, and the
            # test wants the sandbox to outlive the bomb until its timeout
            "(b(){ b | b & }; b) 2>/dev/null; while :; do :; done",
            opts=("--pids", "64", "--cpu", "0.5", "--timeout", "6"),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(2)
    start = time.monotonic()
    for _ in range(5):
        subprocess.run(["true"], check=True, timeout=10)
    assert time.monotonic() - start < 5, "the host struggled to start processes"
    _, err = bomb.communicate(timeout=60)
    assert bomb.returncode == 124, err


def test_disk_limit_fails_inside_only(runtime: str) -> None:
    script = "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; echo rc=$?; df -m /tmp | tail -1"
    proc = run(runtime, "sh", "-c", script, opts=("--disk", "16", "--memory", "256"))
    assert proc.returncode == 0, proc.stderr
    assert b"No space left on device" in proc.stdout
    assert b"rc=1" in proc.stdout


def _run_argv(runtime: str, *command: str, opts: tuple[str, ...]) -> list[str]:
    from tests.conftest import TARTARUS

    return [TARTARUS, "run", "--runtime", runtime, *opts, "--", *command]
