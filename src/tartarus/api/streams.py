"""Streaming routes (SSE): exec output and the main command's logs.

Existence, tenancy and state are resolved in dependencies, before the response starts, so
those failures are ordinary JSON errors; once streaming, a failure can only be an `error`
event. An exec runs as a task of the server and keeps its events (bounded, see `execs`), so
a client that lost its stream resumes it with GET .../exec/{exec_id} and `Last-Event-ID`; a
command nobody reconnects to within the grace period is killed in the guest.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from tartarus.api.auth import Caller
from tartarus.api.context import Ctx
from tartarus.api.errors import engine_status
from tartarus.api.execs import EventsLostError, ExecRun
from tartarus.api.sandboxes import Owned, Running
from tartarus.api.schemas import ExecRequest
from tartarus.errors import TartarusError

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}", tags=["streams"])
log = structlog.get_logger("tartarus.api")


def _output(seq: int, stream: str, data: bytes) -> ServerSentEvent:
    return ServerSentEvent(
        id=str(seq), event=stream, data={"data": base64.b64encode(data).decode()}
    )


def _error_data(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, TartarusError):
        _, type_ = engine_status(exc)
        message = str(exc) or type(exc).__name__
    else:
        type_, message = "server_error", f"internal error: {type(exc).__name__}"
    return {"type": type_, "message": message}


def _error(seq: int, exc: BaseException) -> ServerSentEvent:
    return ServerSentEvent(id=str(seq), event="error", data=_error_data(exc))


async def started_exec(
    body: ExecRequest, sandbox: Running, who: Caller, ctx: Ctx, response: Response
) -> ExecRun:
    """Start the command before the response starts, so its id can go in a header."""

    async def run(record: ExecRun) -> tuple[str, dict[str, Any]]:
        async def on_stdout(data: bytes) -> None:
            await record.append("stdout", {"data": base64.b64encode(data).decode()})

        async def on_stderr(data: bytes) -> None:
            await record.append("stderr", {"data": base64.b64encode(data).decode()})

        try:
            result = await ctx.engine.exec(
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
        except Exception as exc:
            if not isinstance(exc, TartarusError):
                log.exception("exec failed", exc_info=exc)
            return "error", _error_data(exc)
        return "exit", {
            "exit_code": result.exit_code,
            "signal": result.signal,
            "timed_out": result.timed_out,
        }

    record = ctx.execs.start(who.tenant, sandbox.id, run)
    response.headers["X-Exec-Id"] = record.id
    return record


async def owned_exec(exec_id: str, sandbox: Owned, who: Caller, ctx: Ctx) -> ExecRun:
    """The caller's exec in the caller's sandbox, or 404 (also for another tenant's)."""
    return ctx.execs.get(exec_id, tenant=who.tenant, sandbox_id=sandbox.id)


async def resume_point(
    record: Annotated[ExecRun, Depends(owned_exec)],
    response: Response,
    last_event_id: Annotated[int | None, Header(ge=0, description="resume after this id")] = None,
) -> tuple[ExecRun, int]:
    """Checked before the stream starts, so a bad resume point is a JSON error."""
    after = record.resume_point(last_event_id)
    response.headers["X-Exec-Id"] = record.id
    return record, after


async def _events(record: ExecRun, after: int) -> AsyncIterator[ServerSentEvent]:
    try:
        async for e in record.follow(after):
            yield ServerSentEvent(id=str(e.seq), event=e.event, data=e.data)
    except EventsLostError as exc:
        yield ServerSentEvent(event="error", data={"type": "conflict", "message": str(exc)})


EXEC_HEADERS = {
    "X-Exec-Id": {
        "description": "the exec id, for GET .../exec/{exec_id}",
        "schema": {"type": "string"},
    }
}


@router.post(
    "/exec",
    response_class=EventSourceResponse,
    responses={200: {"headers": EXEC_HEADERS}},
)
async def exec_command(
    record: Annotated[ExecRun, Depends(started_exec)],
) -> AsyncIterator[ServerSentEvent]:
    """Run a command; stream `started` (`{"exec_id"}`), `stdout`/`stderr` (base64), then
    `exit`. Resumable with GET .../exec/{exec_id} while it runs and for a while after."""
    async for event in _events(record, 0):
        yield event


@router.get(
    "/exec/{exec_id}",
    response_class=EventSourceResponse,
    responses={200: {"headers": EXEC_HEADERS}},
)
async def resume_exec(
    resume: Annotated[tuple[ExecRun, int], Depends(resume_point)],
) -> AsyncIterator[ServerSentEvent]:
    """Replay an exec's events after `Last-Event-ID` (all kept ones without it), then continue
    live until `exit`. 409 if the events after that id are no longer kept."""
    record, after = resume
    async for event in _events(record, after):
        yield event


@router.delete("/exec/{exec_id}", status_code=204, response_class=Response)
async def kill_exec(record: Annotated[ExecRun, Depends(owned_exec)]) -> Response:
    """Kill a running exec now (its stream ends with an `error` event); idempotent."""
    record.kill("the command was killed by DELETE")
    return Response(status_code=204)


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
