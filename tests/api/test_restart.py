"""A server restart (SIGTERM, start again on the same state dir) keeps running sandboxes."""

from __future__ import annotations

import shutil

from tartarus.runtimes import reaper
from tests.api.conftest import ApiServer, client, new_state_dir, new_tenant, output, sse_events


def test_restart_keeps_running_sandboxes() -> None:
    reaper.become_subreaper()  # the sandbox's init outlives the first server: reap it here
    server = ApiServer(new_state_dir())
    try:
        server.start()
        admin_key = server.admin_key
        _, key = new_tenant(server)
        with client(server, key) as c:
            sid = c.post("/v1/sandboxes", json={}).json()["id"]
            assert c.post(f"/v1/sandboxes/{sid}/code", json={"code": "y = 5"}).status_code == 200
        assert server.stop() == 0

        server.start()
        assert server.admin_key == admin_key  # created once, on the first start
        with client(server, key) as c:
            listed = c.get("/v1/sandboxes").json()["items"]
            assert [(s["id"], s["state"]) for s in listed] == [(sid, "running")]
            url = f"/v1/sandboxes/{sid}/exec"
            with c.stream("POST", url, json={"command": ["echo", "still here"]}) as resp:
                events = list(sse_events(resp))
            assert output(events, "stdout") == b"still here\n"
            assert events[-1].data["exit_code"] == 0
            assert c.delete(f"/v1/sandboxes/{sid}").json()["state"] == "killed"
    finally:
        server.stop()
        server.reap()
        shutil.rmtree(server.state_dir, ignore_errors=True)
