"""The embedded CLI (no server) goes through the same admission as the API: policies in
its state dir apply to `run` and `create`, and a denial is one `error:` line, exit 1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tartarus.store import Database
from tartarus.store.audit import AuditLog
from tests.conftest import TARTARUS, probes


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tt-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TARTARUS_URL", "TARTARUS_API_KEY")}
    env["TARTARUS_STATE_DIR"] = str(state_dir)
    return subprocess.run([TARTARUS, *args], env=env, capture_output=True, text=True, timeout=120)


def test_run_is_admitted_and_judged(state_dir: Path) -> None:
    works, why = probes()["gvisor"]
    if not works:
        pytest.skip(f"needs gvisor: {why}")
    path = state_dir / "policies.yaml"
    path.write_text("name: g\nmin_isolation: gvisor\nmax_timeout: 100\n")
    applied = _cli(state_dir, "policy", "apply", str(path))
    assert (applied.returncode, applied.stdout) == (0, "g version 1\n"), applied.stderr
    shown = _cli(state_dir, "policy", "show", "g")
    assert json.loads(shown.stdout)["min_isolation"] == "user-kernel"
    denied = _cli(state_dir, "run", "--runtime", "crun", "--", "true")
    assert denied.returncode == 1
    assert denied.stderr == (
        "error: denied by Rhadamanthus: runtime 'crun' gives container isolation,"
        " the policy requires user-kernel or stronger\n"
    )
    # no runtime: gVisor (its kernel reports 4.4.0), the default timeout lowered to the cap
    ran = _cli(state_dir, "run", "--", "uname", "-r")
    assert (ran.returncode, ran.stdout) == (0, "4.4.0\n"), ran.stderr
    db = Database(state_dir / "tartarus.db")
    try:
        records = AuditLog(db).list()
        assert [r.kind for r in records] == [
            "policy.apply",
            "admission.reject",
            "admission.accept",
        ]
        assert all(r.actor == "cli" and r.tenant is None for r in records)
        assert records[2].sandbox_id is not None
    finally:
        db.close()
    bad = state_dir / "bad.yaml"
    bad.write_text("- name: ok\n- name: Not Valid\n")
    refused = _cli(state_dir, "policy", "apply", str(bad))
    assert refused.returncode == 2
    assert refused.stderr == (
        f"error: {bad}: policy Not Valid: name: must be 1-64 of a-z 0-9 . _ - starting with a"
        " letter or digit\n"
    )
    listed = _cli(state_dir, "audit", "ls", "--kind", "admission.", "--json")
    kinds = [json.loads(line)["kind"] for line in listed.stdout.splitlines()]
    assert kinds == ["admission.reject", "admission.accept"], listed.stderr
    verified = _cli(state_dir, "audit", "verify")
    assert (verified.returncode, verified.stdout) == (0, "ok: the audit chain is whole\n")
    removed = _cli(state_dir, "policy", "rm", "g")
    assert (removed.returncode, removed.stdout) == (0, "g\n")
    assert _cli(state_dir, "policy", "ls", "--json").stdout.strip() == "[]"
