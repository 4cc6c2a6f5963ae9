"""Hibernate and wake over HTTP, through the SDK (sync and async) and the CLI, against a real
`tartarus server` whose idle hibernation is short (TARTARUS_IDLE_HIBERNATE_S=4)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from tartarus.sdk import AsyncSandbox, ConflictError, Sandbox
from tests.api.conftest import ApiServer, assert_error, client, new_tenant, run_server
from tests.conftest import TARTARUS
from tests.engine.test_hibernate import CHECKPOINTING, _checkpointing

IDLE_S = 4.0


@pytest.fixture(scope="module")
def api_server() -> Iterator[ApiServer]:
    yield from run_server({"TARTARUS_IDLE_HIBERNATE_S": str(IDLE_S)})


@pytest.fixture(params=CHECKPOINTING)
def rt(request: pytest.FixtureRequest) -> str:
    return _checkpointing(request.param)


@pytest.fixture
def key(api_server: ApiServer) -> str:
    return new_tenant(api_server)[1]


@pytest.fixture
def sdk_env(api_server: ApiServer, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TARTARUS_URL", api_server.url)
    monkeypatch.setenv("TARTARUS_API_KEY", key)


def _cli(server: ApiServer, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"TARTARUS_URL": server.url, "TARTARUS_API_KEY": key, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [TARTARUS, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.usefixtures("sdk_env")
def test_sdk_hibernate_wake_and_transparent_wake(rt: str) -> None:
    with Sandbox.create(runtime=rt, timeout=300) as sb:
        sb.run_code("x = 41")
        sb.files.write("/tmp/data.txt", "1,2,3")
        slept = sb.hibernate()
        assert slept.state == "hibernated"
        assert slept.checkpoint_bytes and slept.checkpoint_bytes > 0
        assert slept.hibernated_at is not None
        info = sb.info()
        assert (info.state, info.checkpoint_bytes) == ("hibernated", slept.checkpoint_bytes)
        with pytest.raises(ConflictError, match="already hibernated"):
            sb.hibernate()
        with pytest.raises(ConflictError, match="wake it first"):
            sb.pause()
        woken = sb.wake()
        assert (woken.state, woken.checkpoint_bytes) == ("running", None)
        assert sb.run_code("x + 1").value == "42"
        with pytest.raises(ConflictError, match="not hibernated"):
            sb.wake()
        sb.hibernate()
        assert sb.files.read("/tmp/data.txt") == "1,2,3"  # a use wakes it
        assert sb.info().state == "running"
        sb.hibernate()
        assert sb.commands.run("cat /tmp/data.txt").stdout == "1,2,3"
        assert [e.to for e in sb.info().events or []][-2:] == ["hibernated", "running"]


@pytest.mark.usefixtures("sdk_env")
async def test_async_sdk_hibernate_and_wake(rt: str) -> None:
    sb = await AsyncSandbox.create(runtime=rt, timeout=300)
    async with sb:
        await sb.run_code("y = 'kept'")
        assert (await sb.hibernate()).state == "hibernated"
        assert (await sb.wake()).state == "running"
        assert (await sb.run_code("y")).value == "'kept'"


def test_idle_sandboxes_hibernate_and_wake_on_exec(
    api_server: ApiServer, key: str, rt: str
) -> None:
    with client(api_server, key) as c:
        r = c.post("/v1/sandboxes", json={"template": "python", "runtime": rt, "timeout": 300})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        try:
            deadline = time.monotonic() + IDLE_S + 20
            while c.get(f"/v1/sandboxes/{sid}").json()["state"] != "hibernated":
                assert time.monotonic() < deadline, "an idle sandbox did not hibernate"
                time.sleep(0.2)
            listed = c.get("/v1/sandboxes", params={"state": "hibernated"}).json()["items"]
            assert sid in [s["id"] for s in listed]
            assert sid in [s["id"] for s in c.get("/v1/sandboxes").json()["items"]]  # live
            ran = c.post(f"/v1/sandboxes/{sid}/exec", json={"command": ["echo", "awake"]})
            assert ran.status_code == 200, ran.text
            assert c.get(f"/v1/sandboxes/{sid}").json()["state"] == "running"
        finally:
            c.delete(f"/v1/sandboxes/{sid}")


def test_refusals(api_server: ApiServer, key: str) -> None:
    _, other = new_tenant(api_server)
    with client(api_server, key) as c, client(api_server, other) as o:
        r = c.post("/v1/sandboxes", json={"template": "python", "runtime": "crun"})
        sid = r.json()["id"]
        try:
            message = assert_error(c.post(f"/v1/sandboxes/{sid}/hibernate"), 409, "conflict")
            assert "crun" in message and "CRIU" in message
            assert_error(c.post(f"/v1/sandboxes/{sid}/wake"), 409, "conflict")
            assert_error(o.post(f"/v1/sandboxes/{sid}/hibernate"), 404, "not_found")
        finally:
            c.delete(f"/v1/sandboxes/{sid}")
        assert_error(c.post("/v1/sandboxes/sb-000000000000/hibernate"), 404, "not_found")
        assert_error(c.post(f"/v1/sandboxes/{sid}/wake"), 409, "conflict")  # ended
        caps = {i["name"]: i["capabilities"] for i in c.get("/v1/runtimes").json()["items"]}
        assert not caps["crun"]["checkpoint"] and "CRIU" in caps["crun"]["missing"]["checkpoint"]


def test_cli_hibernate_wake_inspect(api_server: ApiServer, key: str, rt: str) -> None:
    created = _cli(api_server, key, "create", "--runtime", rt, "--timeout", "300")
    assert created.returncode == 0, created.stderr
    sid = created.stdout.strip()
    try:
        done = _cli(api_server, key, "hibernate", sid)
        assert (done.returncode, done.stdout) == (0, f"{sid}\n"), done.stderr
        shown = _cli(api_server, key, "inspect", sid)
        assert '"state": "hibernated"' in shown.stdout and '"checkpoint_bytes": ' in shown.stdout
        ps = _cli(api_server, key, "ps", "--state", "hibernated")
        assert sid in ps.stdout
        done = _cli(api_server, key, "wake", sid)
        assert (done.returncode, done.stdout) == (0, f"{sid}\n"), done.stderr
        again = _cli(api_server, key, "wake", sid)
        assert again.returncode == 1 and again.stderr.startswith("error: ")
        assert len(again.stderr.splitlines()) == 1 and "not hibernated" in again.stderr
        missing = _cli(api_server, key, "hibernate", "sb-000000000000")
        assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    finally:
        with client(api_server, key) as c:
            c.delete(f"/v1/sandboxes/{sid}")


def test_http_timeout_does_not_count(api_server: ApiServer, key: str, rt: str) -> None:
    with client(api_server, key) as c:
        r = c.post("/v1/sandboxes", json={"template": "python", "runtime": rt, "timeout": 3})
        sid = r.json()["id"]
        try:
            assert c.post(f"/v1/sandboxes/{sid}/hibernate").json()["state"] == "hibernated"
            time.sleep(3.5)
            assert c.get(f"/v1/sandboxes/{sid}").json()["state"] == "hibernated"
        finally:
            c.delete(f"/v1/sandboxes/{sid}")
