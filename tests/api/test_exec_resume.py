"""Resumable exec streams: reconnect with Last-Event-ID, the grace period, tenancy.

This module runs its own server with a short grace (the shared one kills at once)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.api.conftest import ApiServer, SSEEvent, assert_error, output, run_server, sse_events

GRACE_S = 3.0


@pytest.fixture(scope="module")
def api_server() -> Iterator[ApiServer]:
    yield from run_server({"TARTARUS_EXEC_GRACE_S": str(GRACE_S)})


def _exec(http: httpx2.Client, sid: str, **body: Any) -> list[SSEEvent]:
    with http.stream("POST", f"/v1/sandboxes/{sid}/exec", json=body) as resp:
        assert resp.status_code == 200, resp.read()
        return list(sse_events(resp))


def _resume(http: httpx2.Client, sid: str, exec_id: str, last: int | None = None) -> list[SSEEvent]:
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    with http.stream("GET", f"/v1/sandboxes/{sid}/exec/{exec_id}", headers=headers) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-exec-id"] == exec_id
        return list(sse_events(resp))


def _count(http: httpx2.Client, sid: str, pattern: str) -> int:
    """How many processes in the sandbox have a command line starting with `pattern`."""
    # one process: a shell loop forking `tr` per process took seconds in a VM under TCG
    probe = (
        "import os\n"
        "def cmd(p):\n"
        "    try:\n"
        "        return open(f'/proc/{p}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()\n"
        "    except OSError:\n"
        "        return ''\n"
        f"print(sum(cmd(p).startswith({pattern!r}) for p in os.listdir('/proc') if p.isdigit()))"
    )
    return int(output(_exec(http, sid, command=["python3", "-c", probe]), "stdout").strip())


def _start_and_drop(
    http: httpx2.Client, sid: str, script: str, stdout_events: int
) -> tuple[str, int, bytes]:
    """Start an exec, read `started` and some stdout, then disconnect: (exec_id, last id, out)."""
    with http.stream(
        "POST", f"/v1/sandboxes/{sid}/exec", json={"command": ["sh", "-c", script]}
    ) as resp:
        assert resp.status_code == 200
        events = sse_events(resp)
        started = next(events)
        assert started.event == "started"
        exec_id = started.data["exec_id"]
        assert resp.headers["x-exec-id"] == exec_id
        seen: list[SSEEvent] = [started]
        while len([e for e in seen if e.event == "stdout"]) < stdout_events:
            seen.append(next(events))
    assert [int(e.id or 0) for e in seen] == list(range(1, len(seen) + 1))
    return exec_id, int(seen[-1].id or 0), output(seen, "stdout")


def test_reconnect_gets_exactly_the_missing_events(
    http_a: httpx2.Client, sandbox_a: dict[str, Any]
) -> None:
    sid = sandbox_a["id"]
    script = "for i in 1 2 3 4 5 6 7 8; do echo line$i; sleep 0.2; done; exit 3"
    exec_id, last, before = _start_and_drop(http_a, sid, script, stdout_events=2)
    time.sleep(0.5)  # output goes on meanwhile, into the exec's buffer
    rest = _resume(http_a, sid, exec_id, last)
    assert [int(e.id or 0) for e in rest] == list(range(last + 1, last + 1 + len(rest)))
    assert {e.event for e in rest[:-1]} <= {"stdout"}
    assert rest[-1].event == "exit"
    assert rest[-1].data == {"exit_code": 3, "signal": None, "timed_out": False}
    expected = b"".join(f"line{i}\n".encode() for i in range(1, 9))
    assert before + output(rest, "stdout") == expected

    # a finished exec replays in full (without Last-Event-ID), and nothing after its end
    everything = _resume(http_a, sid, exec_id)
    assert everything[0].event == "started"
    assert output(everything, "stdout") == expected
    assert everything[-1].id == rest[-1].id
    assert _resume(http_a, sid, exec_id, int(rest[-1].id or 0)) == []


def test_unknown_foreign_or_bad_resume_is_an_error(
    api_server: ApiServer,
    http_a: httpx2.Client,
    http_b: httpx2.Client,
    sandbox_a: dict[str, Any],
) -> None:
    sid = sandbox_a["id"]
    assert_error(http_a.get(f"/v1/sandboxes/{sid}/exec/ex-0000000000000000"), 404, "not_found")
    events = _exec(http_a, sid, command=["echo", "hi"])
    exec_id = events[0].data["exec_id"]
    # another tenant: its own sandbox id or A's, the exec does not exist for it
    assert_error(http_b.get(f"/v1/sandboxes/{sid}/exec/{exec_id}"), 404, "not_found")
    r = http_b.post("/v1/sandboxes", json={"template": "python", "timeout": 60})
    assert r.status_code == 201, r.text
    other = r.json()["id"]
    try:
        assert_error(http_b.get(f"/v1/sandboxes/{other}/exec/{exec_id}"), 404, "not_found")
        assert_error(http_b.delete(f"/v1/sandboxes/{other}/exec/{exec_id}"), 404, "not_found")
    finally:
        http_b.delete(f"/v1/sandboxes/{other}")
    ahead = {"Last-Event-ID": str(len(events) + 5)}
    url = f"/v1/sandboxes/{sid}/exec/{exec_id}"
    assert_error(http_a.get(url, headers=ahead), 400, "invalid_request")
    assert_error(http_a.get(url, headers={"Last-Event-ID": "x"}), 422, "invalid_request")


def test_unclaimed_exec_is_killed_after_the_grace(
    http_a: httpx2.Client, sandbox_a: dict[str, Any]
) -> None:
    sid = sandbox_a["id"]
    exec_id, last, _ = _start_and_drop(http_a, sid, "echo up; exec sleep 4321", 1)
    dropped = time.monotonic()
    assert _count(http_a, sid, "sleep 4321") == 1  # it survives the disconnect...
    assert time.monotonic() - dropped < GRACE_S
    deadline = dropped + GRACE_S + 10
    while _count(http_a, sid, "sleep 4321") != 0:  # ...but not the grace
        assert time.monotonic() < deadline, "the exec outlived its grace period"
        time.sleep(0.2)
    assert time.monotonic() - dropped >= GRACE_S - 0.5
    rest = _resume(http_a, sid, exec_id, last)
    assert [e.event for e in rest] == ["error"]
    assert "reconnected" in rest[0].data["message"]


def test_delete_kills_a_running_exec(http_a: httpx2.Client, sandbox_a: dict[str, Any]) -> None:
    sid = sandbox_a["id"]
    exec_id, last, _ = _start_and_drop(http_a, sid, "echo up; exec sleep 5432", 1)
    assert http_a.delete(f"/v1/sandboxes/{sid}/exec/{exec_id}").status_code == 204
    rest = _resume(http_a, sid, exec_id, last)
    assert [e.event for e in rest] == ["error"]
    assert _count(http_a, sid, "sleep 5432") == 0
    assert http_a.delete(f"/v1/sandboxes/{sid}/exec/{exec_id}").status_code == 204  # idempotent
