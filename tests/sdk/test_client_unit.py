"""The SDK against `httpx2.MockTransport`: no server. Request building, error mapping, SSE
parsing, pagination and exec/log streams, sync and async."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from tartarus.sdk import (
    AsyncSandbox,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    Sandbox,
    ServerError,
    TartarusError,
    TimeoutError,
)
from tartarus.sdk._sse import SSEDecoder

URL = "http://tartarus.test"
KEY = "tt_k1_secret"

SANDBOX = {
    "id": "sb-000000000001",
    "tenant": "acme",
    "state": "running",
    "template": "python",
    "runtime": "crun",
    "command": [],
    "env": {},
    "workdir": None,
    "metadata": {"k": "v"},
    "resources": {"cpu": 1.0, "memory_mb": 512, "pids": 256, "disk_mb": 1024},
    "timeout": 300.0,
    "exit_code": None,
    "reason": None,
    "created_at": "2026-01-01T00:00:00Z",
    "started_at": "2026-01-01T00:00:01Z",
    "finished_at": None,
    "timings_ms": {"create": 43.1},
    "unknown_future_field": 1,
}

Handler = Callable[[httpx2.Request], httpx2.Response]


def sse(*events: tuple[str, Any], start: int = 1) -> bytes:
    out = []
    for seq, (name, data) in enumerate(events, start):
        out.append(f"id: {seq}\nevent: {name}\ndata: {json.dumps(data)}\n\n")
    return "".join(out).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def error(status: int, type_: str, message: str) -> httpx2.Response:
    return httpx2.Response(status, json={"error": {"type": type_, "message": message}})


class Recorder:
    """A MockTransport handler that answers by (method, path) and keeps the requests."""

    def __init__(self, routes: dict[tuple[str, str], Handler | httpx2.Response]) -> None:
        self.routes = routes
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        route = self.routes.get((request.method, request.url.path))
        if route is None:
            return error(404, "not_found", f"no route {request.method} {request.url.path}")
        return route(request) if callable(route) else route

    @property
    def last(self) -> httpx2.Request:
        return self.requests[-1]


def with_sandbox(routes: dict[tuple[str, str], Handler | httpx2.Response]) -> Recorder:
    base = {
        ("POST", "/v1/sandboxes"): httpx2.Response(201, json=SANDBOX),
        ("GET", "/v1/sandboxes/sb-000000000001"): httpx2.Response(200, json=SANDBOX),
        ("DELETE", "/v1/sandboxes/sb-000000000001"): httpx2.Response(
            200, json={**SANDBOX, "state": "killed"}
        ),
    }
    return Recorder({**base, **routes})


def connect(recorder: Recorder) -> Sandbox:
    return Sandbox.connect(
        "sb-000000000001", url=URL, api_key=KEY, transport=httpx2.MockTransport(recorder)
    )


async def aconnect(recorder: Recorder) -> AsyncSandbox:
    return await AsyncSandbox.connect(
        "sb-000000000001", url=URL, api_key=KEY, transport=httpx2.MockTransport(recorder)
    )


# -- configuration --------------------------------------------------------------------------


def test_missing_url_is_invalid_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TARTARUS_URL", raising=False)
    with pytest.raises(InvalidRequestError, match="TARTARUS_URL"):
        Sandbox.connect("sb-1", api_key=KEY)


def test_missing_key_is_authentication_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TARTARUS_API_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="TARTARUS_API_KEY"):
        Sandbox.connect("sb-1", url=URL)


def test_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TARTARUS_URL", URL + "/")
    monkeypatch.setenv("TARTARUS_API_KEY", KEY)
    rec = with_sandbox({})
    sb = Sandbox.connect("sb-000000000001", transport=httpx2.MockTransport(rec))
    assert str(rec.last.url) == URL + "/v1/sandboxes/sb-000000000001"
    assert rec.last.headers["Authorization"] == f"Bearer {KEY}"
    assert sb.id == "sb-000000000001"


def test_import_tartarus_is_lazy() -> None:
    code = (
        "import sys, tartarus; assert 'httpx2' not in sys.modules, 'eager';"
        "from tartarus import Sandbox, AsyncSandbox, TartarusError;"
        "import tartarus.sdk.errors as e; assert TartarusError is e.TartarusError;"
        "assert 'httpx2' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "type_", "cls"),
    [
        (400, "invalid_request", InvalidRequestError),
        (401, "authentication", AuthenticationError),
        (403, "permission_denied", PermissionDeniedError),
        (404, "not_found", NotFoundError),
        (408, "timeout", TimeoutError),
        (409, "conflict", ConflictError),
        (413, "payload_too_large", InvalidRequestError),
        (422, "invalid_request", InvalidRequestError),
        (429, "rate_limit", RateLimitError),
        (500, "server_error", ServerError),
        (502, "server_error", ServerError),
        (503, "server_error", ServerError),
        (504, "server_error", TimeoutError),
    ],
)
def test_status_maps_to_exception(status: int, type_: str, cls: type[TartarusError]) -> None:
    rec = Recorder({("GET", "/v1/sandboxes/sb-x"): error(status, type_, "one readable line")})
    with pytest.raises(cls) as info:
        Sandbox.connect("sb-x", url=URL, api_key=KEY, transport=httpx2.MockTransport(rec))
    assert str(info.value) == "one readable line"
    assert info.value.status_code == status
    assert info.value.type == type_
    assert isinstance(info.value, TartarusError)


def test_error_without_json_body() -> None:
    rec = Recorder({("GET", "/v1/sandboxes/sb-x"): httpx2.Response(502, text="Bad Gateway")})
    with pytest.raises(ServerError, match="Bad Gateway") as info:
        Sandbox.connect("sb-x", url=URL, api_key=KEY, transport=httpx2.MockTransport(rec))
    assert info.value.type is None


def test_connection_failure_is_server_error() -> None:
    def fail(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    with pytest.raises(ServerError, match="connection refused"):
        Sandbox.connect("sb-x", url=URL, api_key=KEY, transport=httpx2.MockTransport(fail))


def test_client_timeout_is_timeout_error() -> None:
    def slow(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("timed out", request=request)

    with pytest.raises(TimeoutError):
        Sandbox.connect("sb-x", url=URL, api_key=KEY, transport=httpx2.MockTransport(slow))


def test_sandbox_id_is_quoted_into_the_path() -> None:
    rec = Recorder({})
    with pytest.raises(NotFoundError):
        Sandbox.connect("../keys", url=URL, api_key=KEY, transport=httpx2.MockTransport(rec))
    assert rec.last.url.raw_path == b"/v1/sandboxes/..%2Fkeys"


# -- SSE ------------------------------------------------------------------------------------


def feed(text: str) -> list[tuple[str, str, str | None]]:
    decoder = SSEDecoder()
    events = [decoder.feed(line) for line in text.split("\n")]
    return [(e.event, e.data, e.id) for e in events if e is not None]


def test_sse_multiline_data_and_ids() -> None:
    text = "id: 1\nevent: a\ndata: one\ndata: two\n\n: keep-alive\n\nevent: b\ndata:x\n\n"
    assert feed(text) == [("a", "one\ntwo", "1"), ("b", "x", "1")]  # the last id persists


def test_sse_details() -> None:
    text = "data:  two spaces\r\nretry: 10\nid: 7\nunknown: z\n\ndata\n\nid: a\0b\ndata: y\n\n"
    assert feed(text) == [
        ("message", " two spaces", "7"),  # id before the blank line belongs to this event
        ("message", "", "7"),
        ("message", "y", "7"),
    ]


def test_sse_incomplete_event_at_end_is_dropped() -> None:
    assert feed("data: done\n\ndata: cut") == [("message", "done", None)]


# -- requests -------------------------------------------------------------------------------


def test_create_request_body() -> None:
    rec = with_sandbox({})
    sb = Sandbox.create(
        template="python",
        timeout=60,
        cpu=0.5,
        env={"A": "1"},
        metadata={"k": "v"},
        command="echo hi",
        url=URL,
        api_key=KEY,
        transport=httpx2.MockTransport(rec),
    )
    body = json.loads(rec.last.content)
    assert body == {
        "template": "python",
        "command": ["sh", "-c", "echo hi"],
        "env": {"A": "1"},
        "workdir": None,
        "cpu": 0.5,
        "memory_mb": None,
        "pids": None,
        "disk_mb": None,
        "timeout": 60,
        "runtime": None,
        "metadata": {"k": "v"},
    }
    assert sb.id == SANDBOX["id"]


def test_context_manager_kills() -> None:
    rec = with_sandbox({})
    with connect(rec) as sb:
        assert sb.info().resources.memory_mb == 512
    assert (rec.last.method, rec.last.url.path) == ("DELETE", "/v1/sandboxes/sb-000000000001")


def test_list_follows_cursor_and_sends_filters() -> None:
    def page(request: httpx2.Request) -> httpx2.Response:
        if request.url.params.get("cursor") is None:
            items = [{**SANDBOX, "id": "sb-2"}, {**SANDBOX, "id": "sb-1"}]
            return httpx2.Response(200, json={"items": items, "next_cursor": "sb-1"})
        return httpx2.Response(
            200, json={"items": [{**SANDBOX, "id": "sb-0"}], "next_cursor": None}
        )

    rec = Recorder({("GET", "/v1/sandboxes"): page})
    items = Sandbox.list(
        state=["running", "exited"],
        metadata={"k": "v", "team": "a"},
        url=URL,
        api_key=KEY,
        transport=httpx2.MockTransport(rec),
    )
    assert [i.id for i in items] == ["sb-2", "sb-1", "sb-0"]
    first, second = rec.requests
    assert first.url.params.get_list("state") == ["running", "exited"]
    assert first.url.params.get_list("metadata") == ["k:v", "team:a"]
    assert second.url.params["cursor"] == "sb-1"


def test_files() -> None:
    path = "/v1/sandboxes/sb-000000000001/files"
    rec = with_sandbox(
        {
            ("PUT", path): lambda r: httpx2.Response(
                200, json={"path": "/a", "size": len(r.content)}
            ),
            ("GET", path): httpx2.Response(200, content="héllo".encode()),
            ("GET", path + "/list"): httpx2.Response(
                200,
                json={
                    "entries": [{"name": "a", "type": "file", "size": 5, "mode": 420, "mtime": 1.5}]
                },
            ),
            ("DELETE", path): httpx2.Response(204),
        }
    )
    sb = connect(rec)
    sb.files.write("/home/user/a b.txt", "héllo")
    assert rec.last.content == "héllo".encode()
    assert rec.last.url.params["path"] == "/home/user/a b.txt"
    assert sb.files.read("/a") == "héllo"
    assert sb.files.read("/a", format="bytes") == "héllo".encode()
    [entry] = sb.files.list("/home/user")
    assert (entry.name, entry.type, entry.size) == ("a", "file", 5)
    sb.files.remove("/tmp/d", recursive=True)
    assert rec.last.url.params["recursive"] == "true"


def test_run_code_and_set_timeout() -> None:
    rec = with_sandbox(
        {
            ("POST", "/v1/sandboxes/sb-000000000001/code"): httpx2.Response(
                200,
                json={
                    "stdout": "",
                    "stderr": "",
                    "value": None,
                    "error": {
                        "name": "ZeroDivisionError",
                        "value": "division by zero",
                        "traceback": "tb",
                    },
                },
            ),
            ("POST", "/v1/sandboxes/sb-000000000001/timeout"): httpx2.Response(
                200, json={**SANDBOX, "timeout": 600.0}
            ),
        }
    )
    sb = connect(rec)
    execution = sb.run_code("1/0", context="c1")
    assert execution.error is not None and execution.error.name == "ZeroDivisionError"
    assert json.loads(rec.last.content) == {"code": "1/0", "context": "c1", "timeout": None}
    assert sb.set_timeout(600).timeout == 600.0
    assert json.loads(rec.last.content) == {"timeout": 600}


# -- streams --------------------------------------------------------------------------------

EXEC_PATH = ("POST", "/v1/sandboxes/sb-000000000001/exec")
SNOWMAN = "☃".encode()


def exec_stream() -> httpx2.Response:
    body = sse(
        ("stdout", {"data": b64(b"a" + SNOWMAN[:1])}),
        ("stderr", {"data": b64(b"oops\n")}),
        ("stdout", {"data": b64(SNOWMAN[1:] + b"\n")}),
        ("exit", {"exit_code": 3, "signal": None, "timed_out": False}),
    )
    return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})


def test_exec_streams_and_decodes_split_characters() -> None:
    rec = with_sandbox({EXEC_PATH: lambda r: exec_stream()})
    out: list[str] = []
    err: list[str] = []
    result = connect(rec).commands.run(
        "echo", on_stdout=out.append, on_stderr=err.append, stdin="in", env={"A": "b"}
    )
    assert (result.exit_code, result.stdout, result.stderr) == (3, "a☃\n", "oops\n")
    assert "".join(out) == "a☃\n" and err == ["oops\n"]
    body = json.loads(rec.last.content)
    assert body == {
        "command": ["sh", "-c", "echo"],
        "env": {"A": "b"},
        "cwd": None,
        "timeout": None,
        "stdin": b64(b"in"),
    }


def test_exec_list_command_and_background() -> None:
    rec = with_sandbox({EXEC_PATH: lambda r: exec_stream()})
    handle = connect(rec).commands.run(["python3", "-c", "x"], background=True)
    assert handle.wait().exit_code == 3
    assert handle.kill() is False
    assert json.loads(rec.last.content)["command"] == ["python3", "-c", "x"]


def test_exec_error_event_raises() -> None:
    body = sse(("stdout", {"data": b64(b"x")}), ("error", {"type": "conflict", "message": "gone"}))
    rec = with_sandbox({EXEC_PATH: httpx2.Response(200, content=body)})
    with pytest.raises(ConflictError, match="gone"):
        connect(rec).commands.run("x")


def test_exec_stream_without_exit_is_server_error() -> None:
    rec = with_sandbox({EXEC_PATH: httpx2.Response(200, content=sse(("stdout", {"data": ""})))})
    with pytest.raises(ServerError, match="without an exit"):
        connect(rec).commands.run("x")


def test_exec_on_ended_sandbox_is_json_error() -> None:
    rec = with_sandbox({EXEC_PATH: error(409, "conflict", "sandbox is exited")})
    with pytest.raises(ConflictError, match="sandbox is exited"):
        connect(rec).commands.run("x")


LOGS_PATH = ("GET", "/v1/sandboxes/sb-000000000001/logs")


def logs_stream(request: httpx2.Request) -> httpx2.Response:
    body = sse(
        ("stdout", {"data": b64(b"one\n")}),
        ("stderr", {"data": b64(b"two\n")}),
        ("end", {"state": "exited", "exit_code": 0}),
        ("stdout", {"data": b64(b"after end: ignored\n")}),
        start=5,
    )
    return httpx2.Response(200, content=body)


def test_logs_until_end_with_resume() -> None:
    rec = with_sandbox({LOGS_PATH: logs_stream})
    events = list(connect(rec).logs(follow=True, after=4))
    assert [(e.stream, e.data, e.id) for e in events] == [
        ("stdout", b"one\n", 5),
        ("stderr", b"two\n", 6),
    ]
    assert rec.last.headers["Last-Event-ID"] == "4"
    assert rec.last.url.params["follow"] == "true"


# -- async ----------------------------------------------------------------------------------


async def test_async_sandbox_streams_and_files() -> None:
    rec = with_sandbox(
        {
            EXEC_PATH: lambda r: exec_stream(),
            LOGS_PATH: logs_stream,
            ("GET", "/v1/sandboxes/sb-000000000001/files"): httpx2.Response(
                200, content=b"\x00\xff"
            ),
        }
    )
    got: list[str] = []

    async def on_stdout(text: str) -> None:
        got.append(text)

    async with await aconnect(rec) as sb:
        result = await sb.commands.run("x", on_stdout=on_stdout)
        assert result.stdout == "a☃\n" and "".join(got) == "a☃\n"
        handle = await sb.commands.run("x", background=True)
        assert (await handle.wait()).exit_code == 3
        assert [e.text async for e in sb.logs()] == ["one\n", "two\n"]
        assert await sb.files.read("/bin", format="bytes") == b"\x00\xff"
    assert rec.last.method == "DELETE"


async def test_async_errors_and_pagination() -> None:
    def page(request: httpx2.Request) -> httpx2.Response:
        if request.url.params.get("cursor") is None:
            return httpx2.Response(200, json={"items": [SANDBOX], "next_cursor": "c"})
        return httpx2.Response(200, json={"items": [SANDBOX], "next_cursor": None})

    rec = Recorder({("GET", "/v1/sandboxes"): page})
    items = await AsyncSandbox.list(url=URL, api_key=KEY, transport=httpx2.MockTransport(rec))
    assert len(items) == 2
    with pytest.raises(NotFoundError):
        await AsyncSandbox.connect(
            "nope", url=URL, api_key=KEY, transport=httpx2.MockTransport(rec)
        )


def test_every_sdk_name_resolves() -> None:
    import tartarus
    import tartarus.sdk

    for name in tartarus.sdk.__all__:
        assert getattr(tartarus.sdk, name).__name__ == name
    for name in tartarus.__all__:
        assert getattr(tartarus, name) is not None
