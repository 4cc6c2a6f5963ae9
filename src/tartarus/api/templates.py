"""Template routes: list and inspect templates (any key); build and import them (admin).

Building and importing are blocking work (debootstrap, pip, skopeo, umoci): they run in a
worker thread, never in the event loop's thread. A build streams its progress as SSE events;
existence and role are checked before the stream starts, so those failures are plain JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from tartarus.api.auth import Admin, Caller
from tartarus.api.context import Ctx
from tartarus.api.errors import ApiError, engine_status
from tartarus.api.schemas import ErrorBody, TemplateOut
from tartarus.errors import BuildError, TartarusError
from tartarus.images.cache import ImageCache, ImageInfo
from tartarus.images.catalog import ResolvedTemplate
from tartarus.images.specs import builtin_specs

router = APIRouter(prefix="/v1/templates", tags=["templates"])
log = structlog.get_logger("tartarus.api")

MAX_IMPORT = 2 * 1024 * 1024 * 1024  # bytes of an uploaded image archive
_CHUNK_FLUSH = 1024 * 1024

NameQuery = Annotated[
    str,
    Query(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$",
        description="name of the new template (not a built-in's)",
    ),
]


class TemplateItem(TemplateOut):
    size_bytes: int | None = Field(description="the built image's size, null if not built")
    has_python: bool | None = Field(description="whether the image has python3; null if not built")


class TemplateItemDetail(TemplateItem):
    spec: dict[str, Any]


class TemplateItemList(BaseModel):
    items: list[TemplateItem]


def _out(t: ResolvedTemplate, cache: ImageCache) -> TemplateItem:
    info: ImageInfo | None = None
    if t.image_hash is not None:
        with contextlib.suppress(TartarusError, OSError, ValueError):
            info = cache.info(t.image_hash)
    return TemplateItem(
        name=t.name,
        source=t.source,
        built=t.built,
        image=t.image_hash,
        description=t.spec.description,
        resources=t.spec.resources,
        size_bytes=info.size_bytes if info else None,
        has_python=info.has_python if info else None,
    )


def _detail(t: ResolvedTemplate, cache: ImageCache) -> TemplateItemDetail:
    return TemplateItemDetail(**_out(t, cache).model_dump(), spec=t.spec.model_dump(mode="json"))


@router.get("", response_model=TemplateItemList)
async def list_templates(_: Caller, ctx: Ctx) -> TemplateItemList:
    catalog = ctx.engine.catalog
    return TemplateItemList(items=[_out(t, catalog.cache) for t in catalog.list()])


@router.get("/{name}", response_model=TemplateItemDetail)
async def get_template(name: str, _: Caller, ctx: Ctx) -> TemplateItemDetail:
    catalog = ctx.engine.catalog
    return _detail(catalog.resolve(name), catalog.cache)  # NotFoundError -> 404


# -- import -----------------------------------------------------------------------------------


def _too_large() -> ApiError:
    return ApiError(413, f"image archive over the limit of {MAX_IMPORT // 1024**3} GiB")


async def _save_body(request: Request, dest: Path) -> None:
    """Stream the request body into `dest`, capped at MAX_IMPORT (by header and by count)."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            too_big = int(length) > MAX_IMPORT
        except ValueError:
            raise ApiError(400, "invalid Content-Length") from None
        if too_big:
            raise _too_large()
    size = 0
    buf = bytearray()
    with dest.open("wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_IMPORT:
                raise _too_large()
            buf += chunk
            if len(buf) >= _CHUNK_FLUSH:
                await asyncio.to_thread(f.write, bytes(buf))
                buf.clear()
        if buf:
            f.write(buf)


@router.post(
    "/import",
    status_code=201,
    response_model=TemplateItemDetail,
    responses={413: {"model": ErrorBody, "description": "Archive over the limit (2 GiB)"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def import_template(
    request: Request, name: NameQuery, _: Admin, ctx: Ctx
) -> TemplateItemDetail:
    """Import an OCI archive or docker-save tar (the raw body) as the user template `name`;
    400 if the body is not a usable image archive or `name` is a built-in's."""
    catalog = ctx.engine.catalog
    if name in builtin_specs():  # before reading a possibly large body
        raise ApiError(400, f"'{name}' is a built-in template; choose another name")
    with tempfile.TemporaryDirectory(prefix="tartarus-import-") as tmp:
        archive = Path(tmp) / f"{name}.tar"
        await _save_body(request, archive)
        try:
            await asyncio.to_thread(catalog.register_oci, archive, name, None)
        except BuildError as exc:  # skopeo/umoci refused it: the archive's fault
            raise ApiError(400, str(exc).replace(str(archive), "the uploaded archive")) from None
        except TartarusError as exc:
            status, type_ = engine_status(exc)
            if status == 404:  # "no such file": only our temp file; cannot be the caller's
                status, type_ = 400, "invalid_request"
            raise ApiError(
                status, str(exc).replace(str(archive), "the uploaded archive"), type_
            ) from None
    return _detail(catalog.resolve(name), catalog.cache)


# -- build ------------------------------------------------------------------------------------


async def buildable(name: str, _: Admin, ctx: Ctx) -> ResolvedTemplate:
    """The template, or 404 before the stream starts (admin only: a build is expensive)."""
    return ctx.engine.catalog.resolve(name)


def _done(info: ImageInfo, name: str) -> ServerSentEvent:
    return ServerSentEvent(
        event="done",
        data={
            "name": name,
            "image": info.hash,
            "size_bytes": info.size_bytes,
            "python": info.python,
        },
    )


def _error_data(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, TartarusError):
        _, type_ = engine_status(exc)
        return {"type": type_, "message": str(exc) or type(exc).__name__}
    return {"type": "server_error", "message": f"internal error: {type(exc).__name__}"}


@router.post("/{name}/build", response_class=EventSourceResponse)
async def build_template(
    template: Annotated[ResolvedTemplate, Depends(buildable)],
    ctx: Ctx,
    force: Annotated[bool, Query(description="rebuild even if the image is cached")] = False,
) -> AsyncIterator[ServerSentEvent]:
    """Build a template's image; stream `progress` (`{"step", "fraction"}`), then `done`
    (`{"name", "image", "size_bytes", "python"}`) or `error`. A template whose spec is
    unchanged since its last build answers `done` at once (unless `force`)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    name = template.name

    def progress(step: str, fraction: float | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed (server shutting down)
            loop.call_soon_threadsafe(queue.put_nowait, ("progress", (step, fraction)))

    def build() -> ImageInfo:
        return ctx.engine.catalog.ensure_built(name, progress, force=force)

    async def run(fn: Callable[[], ImageInfo]) -> None:
        try:
            info = await asyncio.to_thread(fn)
        except Exception as exc:
            if not isinstance(exc, TartarusError):
                log.exception("template build failed", exc_info=exc)
            queue.put_nowait(("error", exc))
        else:
            queue.put_nowait(("done", info))

    task = asyncio.create_task(run(build))
    try:
        while True:
            kind, value = await queue.get()
            if kind == "progress":
                step, fraction = value
                yield ServerSentEvent(event="progress", data={"step": step, "fraction": fraction})
            elif kind == "done":
                yield _done(value, name)
                return
            else:
                yield ServerSentEvent(event="error", data=_error_data(value))
                return
    finally:
        # a client that goes away does not stop the build (the thread cannot be interrupted),
        # but the task must still be awaited somewhere: let it finish on its own
        if not task.done():
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
