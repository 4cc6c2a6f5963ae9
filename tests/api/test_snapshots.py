"""Snapshots over HTTP and through the SDK, against a real `tartarus server`: fork one
sandbox into three (files on every runtime; processes too where the runtime checkpoints),
tenants kept apart, bad input answered with the right status."""

from __future__ import annotations

import os
import subprocess

import httpx2
import pytest

from tartarus.sdk import AsyncSandbox, ConflictError, NotFoundError, Sandbox
from tests.api.conftest import ApiServer, assert_error
from tests.conftest import TARTARUS
from tests.engine.test_hibernate import CHECKPOINTING, _checkpointing


def test_fork_one_into_three_through_the_sdk(
    api_server: ApiServer, tenant_a: tuple[str, str], api_runtime: str
) -> None:
    url, key = api_server.url, tenant_a[1]
    with Sandbox.create(url=url, api_key=key, runtime=api_runtime, timeout=120) as source:
        source.files.write("/home/user/state.txt", "saved")
        memory = api_runtime == "microvm"  # a VM's files are on its disk, saved with it
        snap = source.snapshot(name="sdk-fork", memory=memory)
        assert (snap.template, snap.source, snap.memory) == ("python", source.id, memory)
        assert snap.size_bytes > 0
        assert [s.id for s in Sandbox.list_snapshots(api_server.url, key)] == [snap.id]
        clones = [
            Sandbox.create(url=api_server.url, api_key=key, snapshot="sdk-fork", timeout=120)
            for _ in range(3)
        ]
        try:
            for i, clone in enumerate(clones):
                assert clone.info().snapshot == snap.id
                assert clone.files.read("/home/user/state.txt") == "saved"
                clone.files.write("/home/user/state.txt", f"clone {i}")
            for i, clone in enumerate(clones):
                assert clone.files.read("/home/user/state.txt") == f"clone {i}"
            assert source.files.read("/home/user/state.txt") == "saved"
            with pytest.raises(ConflictError, match="in use"):
                Sandbox.delete_snapshot(snap.id, api_server.url, key)
        finally:
            for clone in clones:
                with clone:  # killed and closed
                    pass
    deleted = Sandbox.delete_snapshot("sdk-fork", api_server.url, key)
    assert deleted.id == snap.id
    assert not (api_server.state_dir / "snapshots" / snap.id).exists()
    assert Sandbox.list_snapshots(api_server.url, key) == []


@pytest.fixture(params=CHECKPOINTING)
def checkpointing(request: pytest.FixtureRequest) -> str:
    return _checkpointing(request.param)


@pytest.mark.slow
def test_memory_fork_through_the_sdk(
    api_server: ApiServer, tenant_a: tuple[str, str], checkpointing: str
) -> None:
    url, key = api_server.url, tenant_a[1]
    with Sandbox.create(url=url, api_key=key, runtime=checkpointing, timeout=120) as source:
        source.run_code("x = 41")
        snap = source.snapshot(memory=True)
        assert (snap.memory, snap.runtime) == (True, checkpointing)
        clones = [Sandbox.create(url=url, api_key=key, snapshot=snap.id) for _ in range(3)]
        try:
            for i, clone in enumerate(clones):
                assert clone.run_code("x + 1").value == "42"
                clone.run_code(f"x = {i}")
            assert [clone.run_code("x").value for clone in clones] == ["0", "1", "2"]
            assert source.run_code("x").value == "41"
        finally:
            for clone in clones:
                with clone:  # killed and closed
                    pass
    crun = Sandbox.create(url=url, api_key=key, runtime="crun", timeout=60)
    with crun, pytest.raises(ConflictError, match="checkpoint"):
        crun.snapshot(memory=True)
    Sandbox.delete_snapshot(snap.id, url, key)


async def test_async_twin(api_server: ApiServer, tenant_a: tuple[str, str]) -> None:
    key = tenant_a[1]
    async with await AsyncSandbox.create(url=api_server.url, api_key=key, timeout=60) as sb:
        await sb.files.write("/home/user/a", "1")
        snap = await sb.snapshot()
    clone = await AsyncSandbox.create(url=api_server.url, api_key=key, snapshot=snap.id)
    async with clone:
        assert await clone.files.read("/home/user/a") == "1"
    assert [s.id for s in await AsyncSandbox.list_snapshots(api_server.url, key)] == [snap.id]
    await AsyncSandbox.delete_snapshot(snap.id, api_server.url, key)


def test_bad_input_and_tenants(http_a: httpx2.Client, http_b: httpx2.Client) -> None:
    r = http_a.post("/v1/sandboxes", json={"snapshot": "snap-nothere"})
    assert "no snapshot" in assert_error(r, 404, "not_found")
    r = http_a.post("/v1/sandboxes", json={"timeout": 60})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    try:
        r = http_a.post(f"/v1/sandboxes/{sid}/snapshot", json={"name": "api-snap"})
        assert r.status_code == 201, r.text
        snap = r.json()
        assert set(snap) >= {"id", "name", "size_bytes", "created_at", "template", "memory"}
        # another tenant sees neither the sandbox nor the snapshot
        assert_error(http_b.post(f"/v1/sandboxes/{sid}/snapshot"), 404, "not_found")
        for ref in (snap["id"], "api-snap"):
            assert_error(http_b.post("/v1/sandboxes", json={"snapshot": ref}), 404, "not_found")
            assert_error(http_b.delete(f"/v1/snapshots/{ref}"), 404, "not_found")
        assert http_b.get("/v1/snapshots").json()["items"] == []
        r = http_a.post(f"/v1/sandboxes/{sid}/snapshot", json={"name": "api-snap"})
        assert "exists" in assert_error(r, 409, "conflict")
        r = http_a.post(f"/v1/sandboxes/{sid}/snapshot", json={"name": "bad name!"})
        assert_error(r, 422, "invalid_request")
        r = http_a.post("/v1/sandboxes", json={"snapshot": "api-snap", "template": "base"})
        assert "of template 'python'" in assert_error(r, 400, "invalid_request")
    finally:
        assert http_a.delete(f"/v1/sandboxes/{sid}").status_code == 200
    r = http_a.post(f"/v1/sandboxes/{sid}/snapshot")  # ended
    assert "not running" in assert_error(r, 409, "conflict")
    assert http_a.delete(f"/v1/snapshots/{snap['id']}").status_code == 200
    assert_error(http_a.delete(f"/v1/snapshots/{snap['id']}"), 404, "not_found")


def test_sdk_errors(api_server: ApiServer, tenant_b: tuple[str, str]) -> None:
    with pytest.raises(NotFoundError):
        Sandbox.create(url=api_server.url, api_key=tenant_b[1], snapshot="snap-nothere")


def test_cli_through_the_server(api_server: ApiServer, tenant_a: tuple[str, str]) -> None:
    env = {**os.environ, "TARTARUS_URL": api_server.url, "TARTARUS_API_KEY": tenant_a[1]}

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [TARTARUS, *args], env=env, capture_output=True, timeout=120, check=False
        )

    created = cli("create", "--timeout", "120")
    assert created.returncode == 0, created.stderr
    sid = created.stdout.decode().strip()
    try:
        assert cli("exec", sid, "--", "sh", "-c", "echo cli > ~/f").returncode == 0
        taken = cli("snapshot", sid, "--name", "cli-snap")
        assert taken.returncode == 0, taken.stderr
        snap_id = taken.stdout.decode().strip()
        ran = cli("run", "--snapshot", "cli-snap", "--", "cat", "/home/user/f")
        assert (ran.returncode, ran.stdout) == (0, b"cli\n"), ran.stderr
        clone = cli("create", "--snapshot", snap_id)
        assert clone.returncode == 0, clone.stderr
        assert cli("kill", clone.stdout.decode().strip()).returncode == 0
        listed = cli("checkpoints", "ls")
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.decode().splitlines() if snap_id in line)
        assert "snapshot" in row and "cli-snap" in row and "python" in row
        again = cli("snapshot", sid, "--name", "cli-snap")
        assert again.returncode == 1 and again.stderr.decode().startswith("error: a snapshot")
    finally:
        assert cli("kill", sid).returncode == 0
    removed = cli("checkpoints", "rm", "cli-snap")
    assert (removed.returncode, removed.stdout) == (0, b"cli-snap\n"), removed.stderr
    assert not (api_server.state_dir / "snapshots" / snap_id).exists()
