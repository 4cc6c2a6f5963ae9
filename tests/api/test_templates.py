"""Templates over the API: list/get for any key; build (an SSE stream) and import for admins."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.api.conftest import (
    ApiServer,
    SSEEvent,
    assert_error,
    client,
    new_tenant,
    output,
    sse_events,
)
from tests.images.conftest import make_busybox_layout, skopeo_export


@pytest.fixture(scope="module")
def admin_http(api_server: ApiServer) -> Iterator[httpx2.Client]:
    with client(api_server, api_server.admin_key) as c:
        c.timeout = httpx2.Timeout(60.0, read=900.0)
        yield c


@pytest.fixture(scope="module")
def member_http(api_server: ApiServer) -> Iterator[httpx2.Client]:
    _, key = new_tenant(api_server, role="member")
    with client(api_server, key) as c:
        yield c


def _build(http: httpx2.Client, name: str, **params: str) -> tuple[int, list[SSEEvent]]:
    with http.stream("POST", f"/v1/templates/{name}/build", params=params) as resp:
        if resp.status_code != 200:
            resp.read()
            return resp.status_code, []
        assert resp.headers["content-type"].startswith("text/event-stream")
        return 200, list(sse_events(resp))


def test_list_and_get_for_any_key(member_http: httpx2.Client) -> None:
    r = member_http.get("/v1/templates")
    assert r.status_code == 200, r.text
    names = {t["name"]: t for t in r.json()["items"]}
    assert "python" in names
    python = names["python"]
    assert {"name", "source", "built", "image", "description", "resources"} <= set(python)
    assert python["source"] == "builtin"
    r = member_http.get("/v1/templates/python")
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["name"] == "python"
    assert_error(member_http.get("/v1/templates/no-such-template"), 404, "not_found")


def test_build_cached_template_answers_done(admin_http: httpx2.Client) -> None:
    status, events = _build(admin_http, "python")
    assert status == 200
    assert events, "no events"
    assert all(e.event in ("progress", "done") for e in events), events
    done = events[-1]
    assert done.event == "done"
    assert done.data["name"] == "python"
    assert isinstance(done.data["image"], str) and done.data["image"]
    assert done.data["size_bytes"] > 0
    listed = admin_http.get("/v1/templates/python").json()
    assert listed["built"] is True
    assert listed["image"] == done.data["image"]


def test_build_unknown_is_404_json(admin_http: httpx2.Client) -> None:
    r = admin_http.post("/v1/templates/no-such-template/build")
    assert_error(r, 404, "not_found")


def test_build_and_import_need_admin(member_http: httpx2.Client) -> None:
    assert_error(member_http.post("/v1/templates/python/build"), 403, "permission_denied")
    r = member_http.post(
        "/v1/templates/import",
        params={"name": "nope"},
        content=b"whatever",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert_error(r, 403, "permission_denied")


def test_import_garbage_is_400(admin_http: httpx2.Client) -> None:
    r = admin_http.post(
        "/v1/templates/import",
        params={"name": f"garbage-{os.getpid()}"},
        content=b"this is not a tar file at all" * 10,
        headers={"Content-Type": "application/octet-stream"},
    )
    message = assert_error(r, 400, "invalid_request")
    assert "/tmp" not in message, message  # the server's temp path is not the caller's business
    assert_error(admin_http.get(f"/v1/templates/garbage-{os.getpid()}"), 404, "not_found")


def test_import_empty_body_is_400(admin_http: httpx2.Client) -> None:
    r = admin_http.post("/v1/templates/import", params={"name": f"empty-{os.getpid()}"})
    assert_error(r, 400, "invalid_request")


def test_import_builtin_name_is_400(admin_http: httpx2.Client) -> None:
    r = admin_http.post("/v1/templates/import", params={"name": "python"}, content=b"x")
    assert "built-in" in assert_error(r, 400, "invalid_request")


def test_import_bad_name_is_422(admin_http: httpx2.Client) -> None:
    r = admin_http.post("/v1/templates/import", params={"name": "Bad Name"}, content=b"x")
    assert_error(r, 422, "invalid_request")


def test_import_over_limit_is_413(api_server: ApiServer) -> None:
    # a declared length over the limit is refused before any of the body is read (a raw
    # socket: HTTP clients will not send a Content-Length they do not mean)
    with socket.create_connection(("127.0.0.1", api_server.port), timeout=30) as sock:
        sock.sendall(
            (
                "POST /v1/templates/import?name=huge HTTP/1.1\r\n"
                "Host: 127.0.0.1\r\n"
                f"Authorization: Bearer {api_server.admin_key}\r\n"
                "Content-Type: application/octet-stream\r\n"
                f"Content-Length: {3 * 1024**3}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == b"413", answer
    assert json.loads(body)["error"]["type"] == "payload_too_large"


@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_import_then_run_a_sandbox(
    admin_http: httpx2.Client, tmp_path: Path, transport: str
) -> None:
    layout = make_busybox_layout(tmp_path / "layout")
    archive = skopeo_export(layout, "t", transport, tmp_path / "bb.tar")
    name = f"bb-{transport}-{os.getpid()}"
    r = admin_http.post(
        "/v1/templates/import",
        params={"name": name},
        content=archive.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    tpl = r.json()
    assert tpl["name"] == name and tpl["source"] == "oci" and tpl["built"] is True
    assert tpl["image"].startswith("oci-")
    assert tpl["has_python"] is False

    items = {t["name"]: t for t in admin_http.get("/v1/templates").json()["items"]}
    assert items[name]["image"] == tpl["image"]

    # building an imported template is a no-op that reports its image
    status, events = _build(admin_http, name)
    assert status == 200 and events[-1].event == "done", events
    assert events[-1].data["image"] == tpl["image"]

    r = admin_http.post("/v1/sandboxes", json={"template": name, "timeout": 120})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    try:
        with admin_http.stream(
            "POST", f"/v1/sandboxes/{sid}/exec", json={"command": ["sh", "-c", "echo hi"]}
        ) as resp:
            assert resp.status_code == 200
            exec_events = list(sse_events(resp))
        assert exec_events[-1].event == "exit", exec_events
        assert exec_events[-1].data["exit_code"] == 0
        assert output(exec_events, "stdout") == b"hi\n"
    finally:
        admin_http.delete(f"/v1/sandboxes/{sid}")


def test_async_sdk(api_server: ApiServer, tmp_path: Path) -> None:
    from tartarus.sdk import errors
    from tartarus.sdk.templates import AsyncTemplates

    layout = make_busybox_layout(tmp_path / "layout")
    archive = skopeo_export(layout, "t", "oci-archive", tmp_path / "bb.tar")
    name = f"sdk-async-{os.getpid()}"

    async def main() -> None:
        async with AsyncTemplates(api_server.url, api_server.admin_key) as templates:
            assert "python" in {t["name"] for t in await templates.list()}
            steps: list[str] = []
            done = await templates.build("python", on_progress=lambda s, f: steps.append(s))
            assert done["name"] == "python" and done["image"]
            imported = await templates.import_(archive, name)
            assert imported["name"] == name and imported["source"] == "oci"
            assert (await templates.get(name))["image"] == imported["image"]
            with pytest.raises(errors.NotFoundError):
                await templates.build("no-such-template")
            with pytest.raises(errors.InvalidRequestError):
                await templates.import_(tmp_path / "layout", "x")  # a directory: not a file

    asyncio.run(main())
