"""A server restart (SIGTERM, start again on the same state dir) keeps running sandboxes, on
every runtime; with the `hibernate` shutdown policy those that can sleep on disk until the
next server's first use, and the others run on (node/shutdown.py).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import httpx2
import pytest

from tartarus.models import SandboxState
from tartarus.runtimes import reaper
from tartarus.store import Database
from tartarus.store.sandboxes import SandboxRepository
from tests.api.conftest import ApiServer, client, new_state_dir, new_tenant, output, sse_events
from tests.conftest import ALL_RUNTIMES, working


def _create(c: httpx2.Client, **body: object) -> str:
    r = c.post("/v1/sandboxes", json={"template": "python", "timeout": 300, **body})
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


def _code(c: httpx2.Client, sid: str, code: str) -> httpx2.Response:
    return c.post(f"/v1/sandboxes/{sid}/code", json={"code": code})


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[ApiServer]:
    reaper.become_subreaper()  # the sandboxes' inits outlive the first server: reap them here
    env: dict[str, str] = getattr(request, "param", {})
    server = ApiServer(new_state_dir(), env=env)
    try:
        yield server
    finally:
        server.stop()
        server.reap()
        shutil.rmtree(server.state_dir, ignore_errors=True)


def test_restart_keeps_running_sandboxes(server: ApiServer) -> None:
    runtimes = [working(name) for name in ALL_RUNTIMES]
    server.start()
    admin_key = server.admin_key
    _, key = new_tenant(server)
    with client(server, key) as c:
        ids = [_create(c, runtime=name) for name in runtimes]
        for sid in ids:
            assert _code(c, sid, "y = 5").status_code == 200
    assert server.stop() == 0

    server.start()
    assert server.admin_key == admin_key  # created once, on the first start
    with client(server, key) as c:
        listed = c.get("/v1/sandboxes").json()["items"]
        assert sorted((s["id"], s["state"]) for s in listed) == sorted(
            (sid, "running") for sid in ids
        )
        for sid in ids:
            url = f"/v1/sandboxes/{sid}/exec"
            with c.stream("POST", url, json={"command": ["echo", "still here"]}) as resp:
                events = list(sse_events(resp))
            assert output(events, "stdout") == b"still here\n"
            assert events[-1].data["exit_code"] == 0
            assert _code(c, sid, "y").json()["value"] == "5"
            assert c.delete(f"/v1/sandboxes/{sid}").json()["state"] == "killed"


HIBERNATING = {"TARTARUS_SHUTDOWN": "hibernate"}


@pytest.mark.slow
@pytest.mark.parametrize("server", [HIBERNATING], indirect=True)
def test_shutdown_policy_hibernate(server: ApiServer) -> None:
    runtimes = [working(name) for name in ALL_RUNTIMES]
    server.start()
    _, key = new_tenant(server)
    with client(server, key) as c:
        caps = {i["name"]: i["capabilities"] for i in c.get("/v1/runtimes").json()["items"]}
        ids = {name: _create(c, runtime=name) for name in runtimes}
        for sid in ids.values():
            assert _code(c, sid, "y = 5").status_code == 200
        busy = _create(c, runtime="gvisor", command=["sh", "-c", "echo up; sleep 300"])
        _wait_for_output(c, busy, b"up")
    assert server.stop() == 0, server.log()

    records = SandboxRepository(Database(server.state_dir / "tartarus.db"))
    for name, sid in ids.items():
        asleep = caps[name]["checkpoint"]
        expected = SandboxState.HIBERNATED if asleep else SandboxState.RUNNING
        assert records.get(sid).state == expected, (name, records.get(sid))
    assert caps["gvisor"]["checkpoint"] and not caps["crun"]["checkpoint"]
    assert records.get(busy).state == SandboxState.RUNNING  # its main command: left running

    server.start()
    with client(server, key) as c:
        for name, sid in ids.items():  # any use wakes it: the variable is still there
            ran = _code(c, sid, "y + 1")
            assert (ran.status_code, ran.json().get("value")) == (200, "6"), (name, ran.text)
            assert c.get(f"/v1/sandboxes/{sid}").json()["state"] == "running"
            assert c.delete(f"/v1/sandboxes/{sid}").json()["state"] == "killed"
        assert c.get(f"/v1/sandboxes/{busy}").json()["state"] == "running"
        with c.stream("GET", f"/v1/sandboxes/{busy}/logs") as resp:  # re-attached
            assert output(list(sse_events(resp)), "stdout") == b"up\n"
        assert c.delete(f"/v1/sandboxes/{busy}").json()["state"] == "killed"


def _wait_for_output(c: httpx2.Client, sid: str, text: bytes) -> None:
    for _ in range(300):
        with c.stream("GET", f"/v1/sandboxes/{sid}/logs") as resp:
            if text in output(list(sse_events(resp)), "stdout"):
                return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in the output of {sid}")
