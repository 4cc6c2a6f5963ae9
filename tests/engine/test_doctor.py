"""`tartarus doctor`: every runtime probed for real, and `--require` for CI."""

from __future__ import annotations

import json

from tests.conftest import REQUIRED
from tests.engine.helpers import tartarus


def test_doctor_reports_each_runtime() -> None:
    proc = tartarus("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report["runtimes"]) >= {"crun", "runc", "gvisor"}
    for name in REQUIRED:
        assert report["runtimes"][name]["works"], report["runtimes"][name]
    assert all(report["tools"].values()), report["tools"]


def test_doctor_require_fails_for_an_unknown_runtime() -> None:
    proc = tartarus("doctor", "--require", "crun,nosuch")
    assert proc.returncode == 1
    assert b"nosuch" in proc.stderr
