"""Exec over SSE, code, and files in a running sandbox."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx2

from tests.api.conftest import SSEEvent, assert_error, output, sse_events


def _exec(http: httpx2.Client, sid: str, **body: Any) -> list[SSEEvent]:
    with http.stream("POST", f"/v1/sandboxes/{sid}/exec", json=body) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(resp))


def test_exec_streams_output_and_exit(http_a: httpx2.Client, sandbox_a: dict[str, Any]) -> None:
    events = _exec(
        http_a, sandbox_a["id"], command=["sh", "-c", "echo out; echo err >&2; echo more"]
    )
    assert output(events, "stdout") == b"out\nmore\n"
    assert output(events, "stderr") == b"err\n"
    assert events[-1].event == "exit"
    assert events[-1].data == {"exit_code": 0, "signal": None, "timed_out": False}
    assert events[0].event == "started"
    assert events[0].data["exec_id"].startswith("ex-")
    ids = [int(e.id or 0) for e in events]
    assert ids == list(range(1, len(events) + 1))


def test_exec_nonzero_exit_env_cwd_stdin(http_a: httpx2.Client, sandbox_a: dict[str, Any]) -> None:
    events = _exec(http_a, sandbox_a["id"], command=["sh", "-c", "exit 7"])
    assert events[-1].data["exit_code"] == 7
    events = _exec(
        http_a,
        sandbox_a["id"],
        command=["sh", "-c", 'echo "$GREETING"; pwd; cat'],
        env={"GREETING": "hello"},
        cwd="/tmp",
        stdin=base64.b64encode(b"from stdin").decode(),
    )
    assert output(events, "stdout") == b"hello\n/tmp\nfrom stdin"
    events = _exec(http_a, sandbox_a["id"], command=["no-such-binary"])
    assert events[-1].event == "exit"
    assert events[-1].data["exit_code"] == 127


def test_exec_timeout_and_bad_input(http_a: httpx2.Client, sandbox_a: dict[str, Any]) -> None:
    events = _exec(http_a, sandbox_a["id"], command=["sleep", "30"], timeout=0.5)
    assert events[-1].event == "exit"
    assert events[-1].data["timed_out"] is True
    url = f"/v1/sandboxes/{sandbox_a['id']}/exec"
    assert "command" in assert_error(http_a.post(url, json={"command": []}), 422, "invalid_request")
    msg = assert_error(
        http_a.post(url, json={"command": ["cat"], "stdin": "!!"}), 422, "invalid_request"
    )
    assert "stdin" in msg


def test_exec_delete_kills_a_disconnected_command(
    http_a: httpx2.Client, sandbox_a: dict[str, Any]
) -> None:
    """A dropped stream leaves the command running for a reconnect (test_exec_resume.py);
    DELETE on the exec kills it at once."""
    sid = sandbox_a["id"]
    script = "echo started; exec sleep 1234"
    with http_a.stream(
        "POST", f"/v1/sandboxes/{sid}/exec", json={"command": ["sh", "-c", script]}
    ) as resp:
        events = sse_events(resp)
        started = next(events)
        assert started.event == "started"
        exec_id = started.data["exec_id"]
        assert next(events).event == "stdout"
    assert http_a.delete(f"/v1/sandboxes/{sid}/exec/{exec_id}").status_code == 204
    probe = (
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done"
        " | grep -c '^sleep 1234' || true"
    )
    deadline = time.monotonic() + 10
    while True:
        events = _exec(http_a, sid, command=["sh", "-c", probe])
        if output(events, "stdout").strip() == b"0":
            break
        assert time.monotonic() < deadline, "the exec survived its DELETE"
        time.sleep(0.2)


def test_files_roundtrip(http_a: httpx2.Client, sandbox_a: dict[str, Any]) -> None:
    base = f"/v1/sandboxes/{sandbox_a['id']}/files"
    data = bytes(range(256)) * 1000
    r = http_a.put(base, params={"path": "/home/user/dir/a.bin"}, content=data)
    assert r.status_code == 200, r.text
    assert r.json() == {"path": "/home/user/dir/a.bin", "size": len(data)}
    r = http_a.get(base, params={"path": "/home/user/dir/a.bin"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.content == data
    entries = http_a.get(f"{base}/list", params={"path": "/home/user/dir"}).json()["entries"]
    assert [(e["name"], e["type"], e["size"]) for e in entries] == [("a.bin", "file", len(data))]
    assert {"mode", "mtime"} <= set(entries[0])
    r = http_a.delete(base, params={"path": "/home/user/dir/a.bin"})
    assert r.status_code == 204
    assert_error(http_a.get(base, params={"path": "/home/user/dir/a.bin"}), 404, "not_found")
    assert_error(http_a.delete(base, params={"path": "/home/user/dir/a.bin"}), 404, "not_found")
    assert http_a.put(base, params={"path": "/home/user/dir/b/c"}, content=b"x").status_code == 200
    assert (
        http_a.delete(base, params={"path": "/home/user/dir", "recursive": "true"}).status_code
        == 204
    )
    assert_error(http_a.get(f"{base}/list", params={"path": "/home/user/dir"}), 404, "not_found")
    assert "path" in assert_error(http_a.get(base, params={"path": "rel"}), 422, "invalid_request")
    assert "path" in assert_error(http_a.get(base), 422, "invalid_request")


def test_upload_over_limit_is_413(http_a: httpx2.Client, sandbox_a: dict[str, Any]) -> None:
    base = f"/v1/sandboxes/{sandbox_a['id']}/files"
    big = b"\0" * (64 * 1024 * 1024 + 1)
    r = http_a.put(base, params={"path": "/tmp/big"}, content=big)
    assert_error(r, 413, "payload_too_large")

    def chunks() -> Any:  # no Content-Length: counted while reading
        for _ in range(65):
            yield b"\0" * (1024 * 1024)

    r = http_a.put(base, params={"path": "/tmp/big"}, content=chunks())
    assert_error(r, 413, "payload_too_large")
    assert_error(http_a.get(base, params={"path": "/tmp/big"}), 404, "not_found")


def test_code_keeps_state(http_a: httpx2.Client, sandbox_a: dict[str, Any]) -> None:
    url = f"/v1/sandboxes/{sandbox_a['id']}/code"
    r = http_a.post(url, json={"code": "x = 20\nprint('set')"})
    assert r.status_code == 200, r.text
    assert r.json() == {"stdout": "set\n", "stderr": "", "value": None, "error": None}
    r = http_a.post(url, json={"code": "x * 2 + 2"})
    assert r.json()["value"] == "42"
    r = http_a.post(url, json={"code": "x", "context": "other"})
    error = r.json()["error"]
    assert error["name"] == "NameError"
    assert "x" in error["value"]
    assert "Traceback" in error["traceback"]
    r = http_a.post(url, json={"code": "1/0"})
    assert r.status_code == 200
    assert r.json()["error"]["name"] == "ZeroDivisionError"
    assert "code" in assert_error(http_a.post(url, json={}), 422, "invalid_request")
