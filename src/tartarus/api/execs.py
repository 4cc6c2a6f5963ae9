"""Resumable execs: each exec's events are kept (bounded) under an exec id, so a client that
lost its connection can reconnect with `Last-Event-ID` and get exactly what it missed.

The command no longer belongs to one HTTP request: it runs as a task of the server's loop.
While no client is attached, a grace timer runs; if nobody reconnects in time the task is
cancelled, which kills the command in the guest (so nothing is orphaned).

Memory is bounded per exec: events already sent to a client are dropped once the exec holds
more than `max_bytes` of output or they are older than `max_age_s`. Events not yet sent to
anyone are never dropped: instead the command's output waits (backpressure, as before), and
the grace timer bounds how long it can wait with nobody attached. A finished exec is
forgotten `max_age_s` after its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tartarus.api.errors import ApiError

GRACE_ENV = "TARTARUS_EXEC_GRACE_S"
DEFAULT_GRACE_S = 30.0
MAX_BYTES = 8 * 1024 * 1024
MAX_AGE_S = 600.0
START_WINDOW_S = 10.0  # for the POST's stream to attach to a new exec
SWEEP_EVERY_S = 1.0
EVENT_OVERHEAD = 64  # bytes counted per event on top of its payload


def grace_from_env() -> float:
    raw = os.environ.get(GRACE_ENV)
    if not raw:
        return DEFAULT_GRACE_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{GRACE_ENV} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"{GRACE_ENV} must be >= 0")
    return value


class EventsLostError(Exception):
    """Raised mid-stream when events a client needs were already dropped."""


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    event: str
    data: dict[str, Any]
    size: int
    ts: float


@dataclass(eq=False)
class ExecRun:
    """One exec's kept events, its task and who is attached."""

    id: str
    tenant: str
    sandbox_id: str
    grace_s: float
    max_bytes: int = MAX_BYTES
    max_age_s: float = MAX_AGE_S
    events: deque[StoredEvent] = field(default_factory=deque)
    seq: int = 0
    size: int = 0
    delivered: int = 0  # the highest seq handed to any client
    unsent: int = 0  # bytes of the events after `delivered`
    done: bool = False
    finished_at: float | None = None
    attached: int = 0
    kill_reason: str = "the command was killed"
    task: asyncio.Task[None] | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _grace: asyncio.TimerHandle | None = None

    # -- producer side ---------------------------------------------------------------------

    def _mark_delivered(self, seq: int) -> None:
        """Events up to `seq` reached a client: they no longer count as unsent."""
        if seq <= self.delivered:
            return
        first = self.events[0].seq if self.events else seq + 1
        for i in range(max(self.delivered + 1, first), seq + 1):
            self.unsent -= self.events[i - first].size
        self.delivered = seq

    def _trim(self) -> None:
        cutoff = time.monotonic() - self.max_age_s
        while self.events and self.events[0].seq <= self.delivered:
            oldest = self.events[0]
            if self.size <= self.max_bytes and oldest.ts >= cutoff:
                break
            self.events.popleft()
            self.size -= oldest.size

    async def append(self, event: str, data: dict[str, Any], *, force: bool = False) -> None:
        """Keep one event; waits while the unsent output is over the bound (unless `force`)."""
        size = EVENT_OVERHEAD + sum(len(str(v)) for v in data.values())
        async with self.changed:
            if not force:
                await self.changed.wait_for(
                    lambda: self.unsent == 0 or self.unsent + size <= self.max_bytes
                )
            self.seq += 1
            self.events.append(StoredEvent(self.seq, event, data, size, time.monotonic()))
            self.size += size
            self.unsent += size
            self._trim()
            self.changed.notify_all()

    async def finish(self, event: str, data: dict[str, Any]) -> None:
        await self.append(event, data, force=True)
        async with self.changed:
            self.done = True
            self.finished_at = time.monotonic()
            self.changed.notify_all()
        self._cancel_grace()

    # -- consumer side ---------------------------------------------------------------------

    def resume_point(self, last_event_id: int | None) -> int:
        """Where a stream resumes: after `last_event_id`, or before the oldest kept event.
        Refuses, before the stream starts, a resume point this exec cannot serve."""
        if last_event_id is None:
            return (self.events[0].seq if self.events else self.seq + 1) - 1
        after = last_event_id
        if after > self.seq:
            raise ApiError(400, f"Last-Event-ID {after} is ahead of this exec (at {self.seq})")
        first = self.events[0].seq if self.events else self.seq + 1
        if after + 1 < first:
            raise ApiError(
                409,
                f"events after {after} are no longer kept (the oldest kept is {first})",
            )
        return after

    async def follow(self, after: int) -> AsyncGenerator[StoredEvent]:
        """The events after `after`, live until the exec ends; attached while iterating."""
        self._attach()
        try:
            nxt = after + 1
            while True:
                async with self.changed:
                    await self.changed.wait_for(functools.partial(self._has_after, nxt))
                    batch = [e for e in self.events if e.seq >= nxt]
                    if not batch and self.done:
                        return
                if batch and batch[0].seq > nxt:
                    # another, faster client let them be dropped: say so instead of a gap
                    raise EventsLostError(f"events {nxt}..{batch[0].seq - 1} are no longer kept")
                for e in batch:
                    yield e
                    nxt = e.seq + 1
                    async with self.changed:
                        if e.seq > self.delivered:
                            self._mark_delivered(e.seq)
                            self.changed.notify_all()
        finally:
            self._detach()

    def _has_after(self, nxt: int) -> bool:
        return self.seq >= nxt or self.done

    def _attach(self) -> None:
        self.attached += 1
        self._cancel_grace()

    def _detach(self) -> None:
        self.attached -= 1
        self.start_grace()

    def start_grace(self, seconds: float | None = None) -> None:
        """Kill the command unless a client attaches within the grace period."""
        if self.attached > 0 or self.done or self._grace is not None:
            return
        delay = self.grace_s if seconds is None else seconds
        self._grace = asyncio.get_running_loop().call_later(delay, self._expire)

    def _cancel_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def _expire(self) -> None:
        self._grace = None
        if self.attached == 0 and not self.done:
            self.kill(f"the command was killed: no client reconnected within {self.grace_s:g}s")

    def kill(self, reason: str) -> bool:
        """Cancel the command (killing it in the guest); False if it had ended."""
        if self.task is None or self.task.done() or self.done:
            return False
        self.kill_reason = reason
        return self.task.cancel()


@dataclass
class ExecRegistry:
    """Every live or recently finished exec of this server, by id."""

    grace_s: float = field(default_factory=grace_from_env)
    runs: dict[str, ExecRun] = field(default_factory=dict)
    _swept: float = 0.0

    def start(
        self,
        tenant: str,
        sandbox_id: str,
        run: Callable[[ExecRun], Awaitable[tuple[str, dict[str, Any]]]],
    ) -> ExecRun:
        """Register an exec and start `run(exec)`, which feeds output via `exec.append` and
        returns the final event; the `started` event is event 1."""
        self.sweep()
        record = ExecRun(
            id=f"ex-{secrets.token_hex(8)}",
            tenant=tenant,
            sandbox_id=sandbox_id,
            grace_s=self.grace_s,
        )
        self.runs[record.id] = record

        async def main() -> None:
            try:
                event, data = await run(record)
            except asyncio.CancelledError:
                event, data = "error", {"type": "conflict", "message": record.kill_reason}
            except Exception as exc:  # `run` maps its own errors; this is a last resort
                event, data = "error", {"type": "server_error", "message": repr(exc)}
            await record.finish(event, data)

        record.events.append(
            StoredEvent(1, "started", {"exec_id": record.id}, EVENT_OVERHEAD, time.monotonic())
        )
        record.seq = 1
        record.size = record.unsent = EVENT_OVERHEAD
        record.task = asyncio.create_task(main(), name=f"exec {record.id}")
        # the POST's own stream attaches a moment later (even with a zero grace)
        record.start_grace(max(self.grace_s, START_WINDOW_S))
        return record

    def get(self, exec_id: str, *, tenant: str, sandbox_id: str) -> ExecRun:
        """The caller's exec in this sandbox, or 404 (also for another tenant's)."""
        self.sweep()
        record = self.runs.get(exec_id)
        if record is None or record.tenant != tenant or record.sandbox_id != sandbox_id:
            raise ApiError(404, f"no exec {exec_id} in sandbox {sandbox_id}")
        return record

    def sweep(self) -> None:
        """Forget execs that ended more than their max age ago (at most once a second: it
        walks every exec kept)."""
        now = time.monotonic()
        if now - self._swept < SWEEP_EVERY_S:
            return
        self._swept = now
        for key, record in list(self.runs.items()):
            if record.finished_at is not None and now - record.finished_at > record.max_age_s:
                del self.runs[key]

    async def close(self) -> None:
        """Kill every running exec (server shutdown)."""
        tasks = [r.task for r in self.runs.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
