"""Streaming routes (SSE): exec output and the main command's logs.

Existence, tenancy and state are resolved in dependencies, before the response starts, so
those failures are ordinary JSON errors; once streaming, a failure can only be an `error`
event. Exec output flows engine -> bounded queue -> generator, so a slow client slows the
command's output instead of growing memory; a client that goes away cancels the exec task,
which closes the agent connection and kills the command in the guest.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from tartarus.api.auth import Caller
from tartarus.api.context import Ctx
from tartarus.api.errors import engine_status
from tartarus.api.sandboxes import Owned, Running
from tartarus.api.schemas import ExecRequest
from tartarus.errors import TartarusError
from tartarus.models import ExecResult

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}", tags=["streams"])

QUEUE_CHUNKS = 64
CANCEL_GRACE_S = 5.0


def _output(seq: int, stream: str, data: bytes) -> ServerSentEvent:
    return ServerSentEvent(
        id=str(seq), event=stream, data={"data": base64.b64encode(data).decode()}
    )


def _error(seq: int, exc: BaseException) -> ServerSentEvent:
    if isinstance(exc, TartarusError):
        _, type_ = engine_status(exc)
        message = str(exc) or type(exc).__name__
    else:
        type_, message = "server_error", f"internal error: {type(exc).__name__}"
    return ServerSentEvent(id=str(seq), event="error", data={"type": type_, "message": message})


async def _next(queue: asyncio.Queue[tuple[str, bytes]], task: asyncio.Task[Any]) -> Any:
    """The next queued chunk, or None once the task is done and the queue drained."""
    while True:
        if not queue.empty():
            return queue.get_nowait()
        if task.done():
            return None
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()


@router.post("/exec", response_class=EventSourceResponse)
async def exec_command(
    body: ExecRequest, sandbox: Running, who: Caller, ctx: Ctx
) -> AsyncIterator[ServerSentEvent]:
    """Run a command; stream `stdout`/`stderr` (base64) events, then `exit`."""
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

    async def on_stdout(data: bytes) -> None:
        await queue.put(("stdout", data))

    async def on_stderr(data: bytes) -> None:
        await queue.put(("stderr", data))

    task: asyncio.Task[ExecResult] = asyncio.create_task(
        ctx.engine.exec(
            sandbox.id,
            list(body.command),
            tenant=who.tenant,
            env=body.env,
            cwd=body.cwd,
            timeout=body.timeout,
            stdin=body.stdin_bytes(),
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )
    )
    seq = 0
    try:
        while (item := await _next(queue, task)) is not None:
            seq += 1
            yield _output(seq, *item)
        seq += 1
        exc = task.exception()
        if exc is not None:
            yield _error(seq, exc)
        else:
            result = task.result()
            yield ServerSentEvent(
                id=str(seq),
                event="exit",
                data={
                    "exit_code": result.exit_code,
                    "signal": result.signal,
                    "timed_out": result.timed_out,
                },
            )
    finally:
        if not task.done():
            task.cancel()  # the client went away: kill the command in the guest
            with anyio.move_on_after(CANCEL_GRACE_S, shield=True):
                await asyncio.wait({task})
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning


@router.get("/logs", response_class=EventSourceResponse)
async def logs(
    sandbox: Owned,
    who: Caller,
    ctx: Ctx,
    follow: Annotated[bool, Query(description="keep streaming until the sandbox ends")] = False,
    last_event_id: Annotated[int | None, Header(ge=0, description="resume after this id")] = None,
) -> AsyncIterator[ServerSentEvent]:
    """The main command's output as `stdout`/`stderr` events, then `end`."""
    seq = last_event_id or 0
    try:
        async for entry in ctx.engine.logs(sandbox.id, tenant=who.tenant, follow=follow, after=seq):
            seq = max(seq, entry.seq)
            yield _output(entry.seq, entry.stream, entry.data)
        final = ctx.engine.get(sandbox.id, tenant=who.tenant)
    except TartarusError as exc:
        yield _error(seq + 1, exc)
        return
    yield ServerSentEvent(
        id=str(seq + 1),
        event="end",
        data={"state": final.state.value, "exit_code": final.exit_code},
    )
