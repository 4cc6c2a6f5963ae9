"""Templates over the API: list and inspect them (any key), build and import them (admin).

from tartarus.sdk.templates import Templates
with Templates() as templates:
    templates.build("python", on_progress=lambda step, fraction: print(step))
    templates.import_("busybox.tar", "busybox")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx2

from tartarus.sdk import errors
from tartarus.sdk._client import NO_READ_LIMIT, AsyncClient, Call, Client, Request
from tartarus.sdk._sse import ServerEvent

__all__ = ["AsyncTemplates", "ProgressCallback", "Templates"]

ProgressCallback = Callable[[str, float | None], object]

# An import uploads the archive, then the server unpacks it: minutes for a big image.
IMPORT_TIMEOUT = httpx2.Timeout(10.0, read=1800.0, write=300.0)
_CHUNK = 1024 * 1024


def _path(name: str, suffix: str = "") -> str:
    return f"/v1/templates/{quote(name, safe='')}{suffix}"


def _json(response: httpx2.Response) -> Any:
    return response.json()


def _items(response: httpx2.Response) -> list[dict[str, Any]]:
    return list(response.json()["items"])


def list_call() -> Call[list[dict[str, Any]]]:
    return Call(Request("GET", "/v1/templates"), _items)


def get_call(name: str) -> Call[dict[str, Any]]:
    return Call(Request("GET", _path(name)), _json)


def build_request(name: str, force: bool) -> Request:
    params = [("force", "true" if force else "false")]
    return Request("POST", _path(name, "/build"), params=params, timeout=NO_READ_LIMIT)


def import_request(name: str) -> Request:
    return Request(
        "POST",
        "/v1/templates/import",
        params=[("name", name)],
        headers={"Content-Type": "application/octet-stream"},
        timeout=IMPORT_TIMEOUT,
    )


class _BuildFollower:
    """Feeds `progress` events to the callback and keeps the `done` event's data."""

    def __init__(self, on_progress: ProgressCallback | None) -> None:
        self.on_progress = on_progress
        self.result: dict[str, Any] | None = None

    def feed(self, event: ServerEvent) -> bool:
        """True once the build is done."""
        if event.event == "progress" and self.on_progress is not None:
            data = event.json() or {}
            self.on_progress(str(data.get("step", "")), data.get("fraction"))
        elif event.event == "done":
            self.result = dict(event.json() or {})
            return True
        return False

    def done(self) -> dict[str, Any]:
        if self.result is None:
            raise errors.ServerError("the build stream ended without a result")
        return self.result


def _archive(path: Path | str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise errors.InvalidRequestError(f"{p}: not a file (an OCI archive or docker-save tar)")
    return p


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


async def _afile_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as f:
        while chunk := await f.read(_CHUNK):
            yield chunk


def _upload(built: httpx2.Request, path: Path, content: Any) -> httpx2.Request:
    headers = {k: v for k, v in built.headers.items() if k.lower() != "content-length"}
    headers["Content-Length"] = str(path.stat().st_size)
    return httpx2.Request(
        built.method, built.url, headers=headers, content=content, extensions=built.extensions
    )


class Templates:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        self._client = Client(url, api_key, transport=transport)

    def list(self) -> list[dict[str, Any]]:
        """Every template: `{"name", "source", "built", "image", "description", "resources"}`."""
        return self._client.call(list_call())

    def get(self, name: str) -> dict[str, Any]:
        """One template, with its `spec`."""
        return self._client.call(get_call(name))

    def build(
        self, name: str, force: bool = False, on_progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        """Build a template's image (admin key); `{"name", "image", "size_bytes", ...}`."""
        follower = _BuildFollower(on_progress)
        for event in self._client.stream(build_request(name, force)):
            if follower.feed(event):
                break
        return follower.done()

    def import_(self, path: Path | str, name: str) -> dict[str, Any]:
        """Upload an OCI archive or docker-save tar as the template `name` (admin key)."""
        archive = _archive(path)
        client = self._client
        request = _upload(client._build(import_request(name)), archive, _file_chunks(archive))
        try:
            response = client._http.send(request)
        except httpx2.HTTPError as exc:
            raise client._transport_error(exc) from exc
        client._check(response)
        return dict(response.json())

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Templates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTemplates:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = AsyncClient(url, api_key, transport=transport)

    async def list(self) -> list[dict[str, Any]]:
        return await self._client.call(list_call())

    async def get(self, name: str) -> dict[str, Any]:
        return await self._client.call(get_call(name))

    async def build(
        self, name: str, force: bool = False, on_progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        follower = _BuildFollower(on_progress)
        async for event in await self._client.stream(build_request(name, force)):
            if follower.feed(event):
                break
        return follower.done()

    async def import_(self, path: Path | str, name: str) -> dict[str, Any]:
        archive = _archive(path)
        client = self._client
        request = _upload(client._build(import_request(name)), archive, _afile_chunks(archive))
        try:
            response = await client._http.send(request)
        except httpx2.HTTPError as exc:
            raise client._transport_error(exc) from exc
        client._check(response)
        return dict(response.json())

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncTemplates:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
