"""File routes: raw bytes in and out of a running sandbox through its guest agent.

Uploads are capped (64 MiB) twice: by Content-Length before reading anything, and by
counting while reading, since a chunked upload has no length to trust.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from tartarus.api.auth import Caller
from tartarus.api.context import Ctx
from tartarus.api.errors import ApiError
from tartarus.api.sandboxes import Running
from tartarus.api.schemas import ErrorBody, FileEntry, FileList, FileWritten
from tartarus.errors import AgentError

router = APIRouter(
    prefix="/v1/sandboxes/{sandbox_id}/files",
    tags=["files"],
    responses={413: {"model": ErrorBody, "description": "Upload over the limit"}},
)

MAX_UPLOAD = 64 * 1024 * 1024

PathQuery = Annotated[
    str, Query(min_length=1, max_length=4096, pattern=r"^/", description="absolute path")
]


BUSY = "Device or resource busy"  # strerror(EBUSY), as the guest agent reports it


@contextlib.contextmanager
def _busy_is_conflict() -> Iterator[None]:
    """EBUSY (e.g. removing `/` or a mount point) is the caller's conflict, not a 502.

    The guest agent reports errnos it does not map (EBUSY among them) as `internal`, which
    the agent client raises as AgentError (502); the proper fix is an EBUSY entry in
    `tartarus.guest.agent._ERRNO_CODES`. Until then it is recognised here by its strerror.
    """
    try:
        yield
    except AgentError as exc:
        if str(exc).startswith("guest agent error:") and str(exc).endswith(BUSY):
            raise ApiError(409, str(exc).removeprefix("guest agent error: ")) from None
        raise


def _too_large() -> ApiError:
    return ApiError(413, f"upload over the limit of {MAX_UPLOAD // (1024 * 1024)} MiB")


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > MAX_UPLOAD:
                raise _too_large()
        except ValueError:
            raise ApiError(400, "invalid Content-Length") from None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_UPLOAD:
            raise _too_large()
    return bytes(body)


@router.put(
    "",
    response_model=FileWritten,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def put_file(
    request: Request, path: PathQuery, sandbox: Running, who: Caller, ctx: Ctx
) -> FileWritten:
    data = await _read_body(request)
    with _busy_is_conflict():
        size = await ctx.engine.agent(sandbox.id, tenant=who.tenant).write_file(path, data)
    return FileWritten(path=path, size=size)


@router.get(
    "",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def get_file(path: PathQuery, sandbox: Running, who: Caller, ctx: Ctx) -> Response:
    data = await ctx.engine.agent(sandbox.id, tenant=who.tenant).read_file(path)
    return Response(content=data, media_type="application/octet-stream")


@router.get("/list", response_model=FileList)
async def list_files(path: PathQuery, sandbox: Running, who: Caller, ctx: Ctx) -> FileList:
    entries = await ctx.engine.agent(sandbox.id, tenant=who.tenant).list_dir(path)
    return FileList(entries=[FileEntry.model_validate(e) for e in entries])


@router.delete("", status_code=204, response_class=Response)
async def delete_file(
    path: PathQuery,
    sandbox: Running,
    who: Caller,
    ctx: Ctx,
    recursive: bool = False,
) -> Response:
    if path.rstrip("/") == "":
        raise ApiError(400, "cannot delete the root directory")
    with _busy_is_conflict():
        await ctx.engine.agent(sandbox.id, tenant=who.tenant).remove(path, recursive=recursive)
    return Response(status_code=204)
