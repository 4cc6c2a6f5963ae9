"""Pause, resume, terminate (on every runtime) and the runtimes listing over HTTP and through
the SDK, against a real `tartarus server`; and a server stopped with the `terminate` shutdown
policy."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import httpx2
import pytest

from tartarus.runtimes import reaper
from tartarus.sdk import AsyncSandbox, ConflictError, Sandbox
from tartarus.store import Database
from tartarus.store.sandboxes import SandboxRepository
from tests.api.conftest import (
    ApiServer,
    assert_error,
    client,
    new_state_dir,
    new_tenant,
    output,
    sse_events,
)
from tests.engine.test_lifecycle import IGNORES_TERM, TRAPS_TERM


def _create(c: httpx2.Client, **body: object) -> str:
    r = c.post("/v1/sandboxes", json={"template": "python", "timeout": 300, **body})
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


def _wait_output(c: httpx2.Client, sid: str, text: bytes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with c.stream("GET", f"/v1/sandboxes/{sid}/logs") as resp:
            if text in output(list(sse_events(resp)), "stdout"):
                return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in the output of {sid}")


def test_pause_and_resume(http_a: httpx2.Client, http_b: httpx2.Client, api_runtime: str) -> None:
    sid = _create(http_a, runtime=api_runtime)
    try:
        r = http_a.post(f"/v1/sandboxes/{sid}/pause")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "paused"
        detail = http_a.get(f"/v1/sandboxes/{sid}").json()
        assert detail["state"] == "paused"
        states = [e["to"] for e in detail["events"] if e.get("to")]  # not admission & co
        assert states[-2:] == ["running", "paused"]
        live = [s["id"] for s in http_a.get("/v1/sandboxes").json()["items"]]
        assert sid in live  # a paused sandbox is a live one
        paused = http_a.get("/v1/sandboxes", params={"state": "paused"}).json()["items"]
        assert [s["id"] for s in paused] == [sid]

        message = assert_error(
            http_a.post(f"/v1/sandboxes/{sid}/exec", json={"command": ["true"]}), 409, "conflict"
        )
        assert "paused" in message
        code = http_a.post(f"/v1/sandboxes/{sid}/code", json={"code": "1"})
        assert "paused" in assert_error(code, 409, "conflict")
        again = assert_error(http_a.post(f"/v1/sandboxes/{sid}/pause"), 409, "conflict")
        assert again == f"sandbox {sid} is already paused"
        assert_error(http_b.post(f"/v1/sandboxes/{sid}/resume"), 404, "not_found")

        r = http_a.post(f"/v1/sandboxes/{sid}/resume")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "running"
        twice = assert_error(http_a.post(f"/v1/sandboxes/{sid}/resume"), 409, "conflict")
        assert twice == f"sandbox {sid} is running, not paused"
        ran = http_a.post(f"/v1/sandboxes/{sid}/code", json={"code": "6 * 7"})
        assert ran.json()["value"] == "42", ran.text
    finally:
        http_a.delete(f"/v1/sandboxes/{sid}")
    ended = assert_error(http_a.post(f"/v1/sandboxes/{sid}/pause"), 409, "conflict")
    assert ended == f"sandbox {sid} is killed, not running"
    assert_error(http_a.post("/v1/sandboxes/sb-000000000000/pause"), 404, "not_found")


def test_kill_of_a_paused_sandbox(http_a: httpx2.Client) -> None:
    sid = _create(http_a)
    assert http_a.post(f"/v1/sandboxes/{sid}/pause").status_code == 200
    killed = http_a.delete(f"/v1/sandboxes/{sid}").json()
    assert (killed["state"], killed["reason"]) == ("killed", "killed by user")


def test_terminate(http_a: httpx2.Client, api_runtime: str) -> None:
    graceful = _create(http_a, runtime=api_runtime, command=["python3", "-c", TRAPS_TERM])
    stubborn = _create(http_a, runtime=api_runtime, command=["python3", "-c", IGNORES_TERM])
    idle = _create(http_a, runtime=api_runtime)
    _wait_output(http_a, graceful, b"ready")
    _wait_output(http_a, stubborn, b"ready")

    r = http_a.post(f"/v1/sandboxes/{graceful}/terminate", json={"grace": 10})
    assert r.status_code == 200, r.text
    done = r.json()
    assert (done["state"], done["exit_code"]) == ("exited", 0)
    assert done["reason"] == "terminated: ended within grace"
    with http_a.stream("GET", f"/v1/sandboxes/{graceful}/logs") as resp:
        assert output(list(sse_events(resp)), "stdout") == b"ready\nwrote 1048576\n"

    started = time.monotonic()
    killed = http_a.post(f"/v1/sandboxes/{stubborn}/terminate", json={"grace": 1}).json()
    assert time.monotonic() - started >= 1
    assert (killed["state"], killed["reason"]) == (
        "killed",
        "terminated: killed after the 1 s grace period",
    )

    assert_error(
        http_a.post(f"/v1/sandboxes/{idle}/terminate", json={"grace": -1}), 422, "invalid_request"
    )
    assert_error(
        http_a.post(f"/v1/sandboxes/{idle}/terminate", json={"grace": 1e9}), 422, "invalid_request"
    )
    r = http_a.post(f"/v1/sandboxes/{idle}/terminate")  # no body: the default grace
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["reason"]) == ("killed", "terminated: ended within grace")
    assert http_a.post(f"/v1/sandboxes/{idle}/terminate").json() == r.json()  # idempotent


def test_terminate_with_checkpoint(api_server: ApiServer, tenant_a: tuple[str, str]) -> None:
    url, key = api_server.url, tenant_a[1]
    with Sandbox.create(url=url, api_key=key, timeout=120) as sb:
        sb.files.write("/home/user/f", "kept")
        final = sb.terminate(grace=2, checkpoint=True)
        assert final.state == "killed" and final.reason is not None
        ended, _, snap = final.reason.partition("; saved as snapshot ")
        assert ended == "terminated: ended within grace"
        with Sandbox.create(url=url, api_key=key, snapshot=snap, timeout=60) as clone:
            assert clone.files.read("/home/user/f") == "kept"
        with pytest.raises(ConflictError, match="nothing left to checkpoint"):
            sb.terminate(checkpoint=True)
    Sandbox.delete_snapshot(snap, url, key)


def test_runtimes_listing(http_a: httpx2.Client, api_server: ApiServer) -> None:
    r = http_a.get("/v1/runtimes")
    assert r.status_code == 200, r.text
    items = {i["name"]: i for i in r.json()["items"]}
    assert set(items) >= {"crun", "runc", "gvisor", "microvm"}
    assert [name for name, i in items.items() if i["default"]] == ["crun"]
    for name in ("crun", "runc", "gvisor", "microvm"):
        item = items[name]
        assert item["available"], item
        caps = item["capabilities"]
        assert caps["pause"] and "pause" not in caps["missing"]
        assert caps["checkpoint"] == (name != "crun")
        assert ("checkpoint" in caps["missing"]) == (name == "crun")
        assert caps["network_modes"] == ["none", "allowlist", "open"]
    assert items["gvisor"]["capabilities"]["exec_channel"] == "agent via runsc exec"
    with client(api_server, None) as anonymous:
        assert_error(anonymous.get("/v1/runtimes"), 401, "authentication")


@pytest.fixture
def sdk_env(
    api_server: ApiServer, tenant_a: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TARTARUS_URL", api_server.url)
    monkeypatch.setenv("TARTARUS_API_KEY", tenant_a[1])


@pytest.mark.usefixtures("sdk_env")
def test_sdk_pause_resume_terminate() -> None:
    with Sandbox.create(timeout=120) as sb:
        assert sb.pause().state == "paused"
        assert sb.info().state == "paused"
        with pytest.raises(ConflictError, match="paused"):
            sb.commands.run("true")
        with pytest.raises(ConflictError, match="already paused"):
            sb.pause()
        assert sb.resume().state == "running"
        assert sb.commands.run("echo hi").stdout == "hi\n"
        final = sb.terminate(grace=5)
        assert (final.state, final.reason) == ("killed", "terminated: ended within grace")


@pytest.mark.usefixtures("sdk_env")
async def test_async_sdk_pause_resume_terminate() -> None:
    sb = await AsyncSandbox.create(timeout=120)
    async with sb:
        assert (await sb.pause()).state == "paused"
        with pytest.raises(ConflictError, match="paused"):
            await sb.run_code("1")
        assert (await sb.resume()).state == "running"
        assert (await sb.run_code("2 + 3")).value == "5"
        final = await sb.terminate()
        assert (final.state, final.reason) == ("killed", "terminated: ended within grace")


@pytest.fixture
def terminating_server() -> Iterator[ApiServer]:
    reaper.become_subreaper()
    env = {"TARTARUS_SHUTDOWN": "terminate", "TARTARUS_TERMINATION_GRACE_S": "3"}
    server = ApiServer(new_state_dir(), env=env)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.reap()
        shutil.rmtree(server.state_dir, ignore_errors=True)


def test_shutdown_policy_terminate(terminating_server: ApiServer) -> None:
    server = terminating_server
    _, key = new_tenant(server)
    with client(server, key) as c:
        graceful = _create(c, command=["python3", "-c", TRAPS_TERM])
        stubborn = _create(c, command=["python3", "-c", IGNORES_TERM])
        paused = _create(c)
        _wait_output(c, graceful, b"ready")
        _wait_output(c, stubborn, b"ready")
        assert c.post(f"/v1/sandboxes/{paused}/pause").status_code == 200
    started = time.monotonic()
    assert server.stop() == 0, server.log()
    assert 3 <= time.monotonic() - started < 25  # the grace of 3 s bounds the wait
    records = SandboxRepository(Database(server.state_dir / "tartarus.db"))
    ends = {sid: records.get(sid) for sid in (graceful, stubborn, paused)}
    assert (ends[graceful].state.value, ends[graceful].exit_code) == ("exited", 0)
    assert ends[graceful].reason == "terminated: ended within grace"
    assert (ends[stubborn].state.value, ends[stubborn].reason) == (
        "killed",
        "terminated: killed after the 3 s grace period",
    )
    assert (ends[paused].state.value, ends[paused].reason) == (
        "killed",
        "terminated: ended within grace",
    )
