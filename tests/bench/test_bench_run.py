"""`tartarus bench` end to end: a real server, real sandboxes, raw crun beside them; and nothing
of the run (server, state dir, raw containers, their cgroups, mounts) left afterwards, even
when it is interrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tartarus.bench.check import check_report

pytestmark = pytest.mark.slow


def _leftovers() -> set[str]:
    found = {str(p) for p in Path("/tmp").glob("ttb-*")}
    found |= {str(p) for p in Path("/sys/fs/cgroup").glob("*/tartarus/bench-*")}
    for name in ("self", "1"):
        mounts = Path(f"/proc/{name}/mountinfo").read_text().splitlines()
        found |= {f"mount {line}" for line in mounts if "/tmp/ttb-" in line}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if b"TARTARUS_STATE_DIR=/tmp/ttb-" in environ.read_bytes():
                argv = (environ.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                found.add(f"process {environ.parent.name}: {argv.decode(errors='replace')}")
        except OSError:
            continue
    return found


def test_quick_exec_case_end_to_end(tmp_path: Path, tartarus_bin: str) -> None:
    before = _leftovers()
    proc = subprocess.run(
        [tartarus_bin, "bench", "--quick", "--only", "4", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "report:" in proc.stdout and "4 exec" in proc.stdout
    assert check_report(tmp_path / "latest.json") == []
    [case] = json.loads((tmp_path / "latest.json").read_text())["cases"]
    assert (case["id"], case["status"]) == (4, "ok")
    assert case["measured"]["runs"] == case["floor"]["runs"] == 30
    # real round-trips: a process started in a container takes milliseconds, not nothing
    assert 0.5 < case["floor"]["median"] < 5000 and 0.5 < case["measured"]["median"] < 5000
    measured, floor = case["measured"]["median"], case["floor"]["median"]
    assert case["ratio"] == pytest.approx(measured / floor, rel=1e-2)
    assert isinstance(case["pass"], bool)
    assert _leftovers() - before == set()


@pytest.mark.parametrize("after_s", [2.0, 10.0], ids=["raw-loop", "sdk-loop"])
def test_interrupted_run_cleans_up(tmp_path: Path, tartarus_bin: str, after_s: float) -> None:
    """Ctrl-C in the middle of the throughput case: 8 raw `crun run`s in flight (after 2 s)
    or 8 SDK clients creating, running and killing sandboxes (after 10 s)."""
    before = _leftovers()
    with subprocess.Popen(
        [tartarus_bin, "bench", "--quick", "--only", "throughput", "--out", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        try:
            deadline = time.monotonic() + 120
            for line in proc.stderr:
                if "case 5 (throughput)" in line or time.monotonic() > deadline:
                    break
            time.sleep(after_s)
            if after_s >= 8:  # the SDK loop follows the raw one: until its sandboxes are up
                until = time.monotonic() + 60
                while not _sandbox_ids(before) and time.monotonic() < until:
                    time.sleep(0.2)
            live = _sandbox_ids(before)
            assert live or after_s < 8, "the SDK loop should have sandboxes up by now"
            proc.send_signal(signal.SIGINT)
            rest = proc.stderr.read()
            assert proc.wait(120) == 130, rest
        finally:
            if proc.poll() is None:  # a failed assertion: still let it clean up
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert "aborted" in rest
    assert not (tmp_path / "latest.json").exists()
    assert _leftovers() - before == set()
    assert [p for sid in live for p in Path("/sys/fs/cgroup").glob(f"*/tartarus/{sid}")] == []


def _sandbox_ids(before: set[str]) -> set[str]:
    """Sandboxes of the benchmark's own server (its state dir is a new /tmp/ttb-*)."""
    ids: set[str] = set()
    for state_dir in set(map(str, Path("/tmp").glob("ttb-*"))) - before:
        ids |= {p.name for p in Path(state_dir, "sandboxes").glob("sb-*")}
    return ids
