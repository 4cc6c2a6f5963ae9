"""Sandbox lifecycle over HTTP, tenant isolation and the error shapes."""

from __future__ import annotations

import time
from typing import Any

import httpx2

from tests.api.conftest import ApiServer, assert_error, client, new_tenant, sse_events


def test_create_get_list_kill(http_a: httpx2.Client, tenant_a: tuple[str, str]) -> None:
    r = http_a.post(
        "/v1/sandboxes",
        json={
            "template": "python",
            "metadata": {"job": "one"},
            "env": {"A": "1"},
            "memory_mb": 256,
        },
    )
    assert r.status_code == 201, r.text
    sb = r.json()
    assert sb["state"] == "running"
    assert sb["tenant"] == tenant_a[0]
    assert sb["template"] == "python"
    assert sb["metadata"] == {"job": "one"}
    assert sb["env"] == {"A": "1"}
    assert sb["resources"]["memory_mb"] == 256
    assert "events" not in sb
    assert set(sb["timings_ms"]) >= {"create"}
    sid = sb["id"]

    detail = http_a.get(f"/v1/sandboxes/{sid}").json()
    assert detail["id"] == sid
    states = [e for e in detail["events"] if e["kind"] == "state"]
    assert [e["to"] for e in states][-1] == "running"
    assert states[0]["from"] is None
    assert [e["kind"] for e in detail["events"]].count("admission") == 1

    listed = http_a.get("/v1/sandboxes").json()
    assert sid in [s["id"] for s in listed["items"]]
    assert all("events" not in s for s in listed["items"])
    only = http_a.get("/v1/sandboxes", params={"metadata": "job:one"}).json()["items"]
    assert [s["id"] for s in only] == [sid]
    assert http_a.get("/v1/sandboxes", params={"metadata": "job:two"}).json()["items"] == []

    killed = http_a.delete(f"/v1/sandboxes/{sid}")
    assert killed.status_code == 200, killed.text
    assert killed.json()["state"] == "killed"
    assert http_a.delete(f"/v1/sandboxes/{sid}").json()["state"] == "killed"  # idempotent
    assert sid not in [s["id"] for s in http_a.get("/v1/sandboxes").json()["items"]]
    ended = http_a.get("/v1/sandboxes", params={"state": "killed"}).json()["items"]
    assert sid in [s["id"] for s in ended]
    every = http_a.get("/v1/sandboxes", params={"state": "all"}).json()["items"]
    assert sid in [s["id"] for s in every]
    assert_error(
        http_a.post(f"/v1/sandboxes/{sid}/exec", json={"command": ["true"]}), 409, "conflict"
    )


def test_list_pages_newest_first(api_server: ApiServer) -> None:
    _, key = new_tenant(api_server)
    with client(api_server, key) as c:
        ids = []
        for _ in range(3):
            r = c.post("/v1/sandboxes", json={})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        try:
            first = c.get("/v1/sandboxes", params={"limit": 2}).json()
            assert [s["id"] for s in first["items"]] == ids[::-1][:2]
            assert first["next_cursor"] == ids[1]
            second = c.get("/v1/sandboxes", params={"limit": 2, "cursor": first["next_cursor"]})
            assert [s["id"] for s in second.json()["items"]] == [ids[0]]
            assert second.json()["next_cursor"] is None
        finally:
            for sid in ids:
                c.delete(f"/v1/sandboxes/{sid}")


def test_other_tenant_gets_404(
    http_a: httpx2.Client, http_b: httpx2.Client, sandbox_a: dict[str, Any]
) -> None:
    sid = sandbox_a["id"]
    base = f"/v1/sandboxes/{sid}"
    assert http_a.get(base).status_code == 200
    unknown = assert_error(http_b.get("/v1/sandboxes/sb-000000000000"), 404, "not_found")
    assert unknown
    assert_error(http_b.get(base), 404, "not_found")
    assert_error(http_b.post(f"{base}/exec", json={"command": ["id"]}), 404, "not_found")
    assert_error(http_b.get(f"{base}/files", params={"path": "/etc/hostname"}), 404, "not_found")
    assert_error(
        http_b.put(f"{base}/files", params={"path": "/tmp/x"}, content=b"x"), 404, "not_found"
    )
    assert_error(http_b.get(f"{base}/files/list", params={"path": "/"}), 404, "not_found")
    assert_error(http_b.post(f"{base}/code", json={"code": "1"}), 404, "not_found")
    assert_error(http_b.get(f"{base}/logs"), 404, "not_found")
    assert_error(http_b.post(f"{base}/timeout", json={"timeout": 10}), 404, "not_found")
    assert_error(http_b.delete(base), 404, "not_found")
    every = http_b.get("/v1/sandboxes", params={"state": "all"}).json()["items"]
    assert sid not in [s["id"] for s in every]
    assert http_a.get(base).json()["state"] == "running"  # B's kill did nothing


def test_set_timeout(http_a: httpx2.Client) -> None:
    sid = http_a.post("/v1/sandboxes", json={"timeout": 300}).json()["id"]
    try:
        r = http_a.post(f"/v1/sandboxes/{sid}/timeout", json={"timeout": 1})
        assert r.status_code == 200, r.text
        assert r.json()["id"] == sid
        deadline = time.monotonic() + 15
        while http_a.get(f"/v1/sandboxes/{sid}").json()["state"] == "running":
            assert time.monotonic() < deadline, "the shortened timeout did not fire"
            time.sleep(0.2)
        assert http_a.get(f"/v1/sandboxes/{sid}").json()["state"] == "timed_out"
        assert_error(
            http_a.post(f"/v1/sandboxes/{sid}/timeout", json={"timeout": 5}), 409, "conflict"
        )
    finally:
        http_a.delete(f"/v1/sandboxes/{sid}")


def test_error_shapes(http_a: httpx2.Client) -> None:
    msg = assert_error(
        http_a.post("/v1/sandboxes", json={"template": "nope"}), 400, "invalid_request"
    )
    assert "nope" in msg
    msg = assert_error(http_a.post("/v1/sandboxes", json={"timeout": -1}), 422, "invalid_request")
    assert "timeout" in msg
    msg = assert_error(http_a.post("/v1/sandboxes", json={"cpu": 0}), 422, "invalid_request")
    assert "cpu" in msg
    msg = assert_error(
        http_a.post("/v1/sandboxes", json={"env": {"1X": "a"}}), 422, "invalid_request"
    )
    assert "env" in msg
    msg = assert_error(http_a.post("/v1/sandboxes", json={"bogus": 1}), 422, "invalid_request")
    assert "bogus" in msg
    msg = assert_error(
        http_a.get("/v1/sandboxes", params={"state": "sleepy"}), 422, "invalid_request"
    )
    assert "state" in msg
    msg = assert_error(http_a.get("/v1/sandboxes", params={"limit": 0}), 422, "invalid_request")
    assert "limit" in msg
    assert_error(
        http_a.post("/v1/sandboxes", content=b"{", headers={"content-type": "application/json"}),
        422,
        "invalid_request",
    )
    assert_error(http_a.get("/v1/sandboxes/sb-ffffffffffff"), 404, "not_found")
    assert_error(http_a.get("/v1/nothing-here"), 404, "not_found")


def test_logs_follow_main_command(http_a: httpx2.Client) -> None:
    script = "sleep 1; echo one; sleep 0.5; echo two >&2; sleep 0.5; echo three; exit 3"
    r = http_a.post("/v1/sandboxes", json={"command": ["sh", "-c", script]})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    try:
        start = time.monotonic()
        with http_a.stream("GET", f"/v1/sandboxes/{sid}/logs", params={"follow": "true"}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            events = list(sse_events(resp))
        assert time.monotonic() - start > 1.0  # it waited for output produced later
        assert events[-1].event == "end"
        assert events[-1].data == {"state": "exited", "exit_code": 3}
        body = [e for e in events if e.event in ("stdout", "stderr")]
        assert b"".join(e.bytes for e in body if e.event == "stdout") == b"one\nthree\n"
        assert b"".join(e.bytes for e in body if e.event == "stderr") == b"two\n"
        ids = [int(e.id or 0) for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)

        # without follow on the ended sandbox: the same output, then end
        with http_a.stream("GET", f"/v1/sandboxes/{sid}/logs") as resp:
            again = list(sse_events(resp))
        assert [(e.event, e.data) for e in again] == [(e.event, e.data) for e in events]

        # resume after the first event
        first = body[0].id
        with http_a.stream(
            "GET", f"/v1/sandboxes/{sid}/logs", headers={"Last-Event-ID": str(first)}
        ) as resp:
            rest = list(sse_events(resp))
        assert [e.id for e in rest[:-1]] == [e.id for e in body[1:]]
        assert rest[-1].event == "end"
    finally:
        http_a.delete(f"/v1/sandboxes/{sid}")
