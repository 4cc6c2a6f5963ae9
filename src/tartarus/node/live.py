"""What the engine holds for each sandbox it supervises, and how commands reach it.

Commands go through the guest agent when the image has python3, and through the runtime's
own exec otherwise; callers of `LiveSandbox.exec` do not need to know which. Every use from
outside (agent calls, runtime execs) first wakes a hibernated sandbox (`waker`, set by
node/hibernate.py) and is counted, so Hypnos knows when a sandbox is idle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tartarus.errors import AgentError, CapabilityError
from tartarus.models import ExecResult, Sandbox
from tartarus.node.agent_client import AgentClient, OutputCallback, _Connection
from tartarus.node.enforcement import OutputMeter
from tartarus.node.logs import OutputLog
from tartarus.runtimes.base import Runtime

USER_UID = USER_GID = 1000  # the unprivileged user commands run as, inside
DEFAULT_OUTPUT_CAP = 64 * 1024 * 1024  # the engine sets the configured one (Erinyes.watch)
CAPPED_POLL_S = 1.0


@dataclass
class LiveSandbox:
    """What this engine process holds for a sandbox it supervises."""

    sandbox: Sandbox
    runtime: Runtime
    directory: Path
    socket_path: Path
    env: dict[str, str]
    workdir: str
    init_pid: int | None = None
    has_agent: bool = True  # False: no python3 in the image, commands go through the runtime
    output: OutputLog | None = None
    kill_reason: str | None = None
    detached: bool = False  # the engine is leaving it running for another engine
    terminating: bool = False  # SIGTERM sent: the final record says how it ended (lifecycle)
    lifecycle_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # pause/resume/terminate
    killed: asyncio.Event = field(default_factory=asyncio.Event)
    deadline_moved: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    # Hypnos (node/hibernate.py): no container while hibernated (or being hibernated or woken)
    container_away: bool = False
    waker: Callable[[], Awaitable[None]] | None = None  # wakes it first if it is hibernated
    in_use: int = 0  # agent connections and runtime execs open right now
    last_used: float = field(default_factory=time.time)  # when the last one ended
    # Erinyes: all output (main and execs) passes it; past the cap it is dropped, not kept
    meter: OutputMeter = field(default_factory=lambda: OutputMeter(cap=DEFAULT_OUTPUT_CAP))

    @property
    def client(self) -> AgentClient:
        if not self.has_agent:
            raise CapabilityError(
                self.runtime.name, "files and code", "the image has no python3 for the guest agent"
            )
        return _UsedClient(self)

    @property
    def quiet_client(self) -> AgentClient:
        """For the engine's own checks: counted while open, but it never wakes the sandbox."""
        return _UsedClient(self, wake=False)

    @asynccontextmanager
    async def using(self) -> AsyncIterator[None]:
        """Wake it if hibernated, and count the use while it lasts."""
        if self.waker is not None:
            await self.waker()
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            self.last_used = time.time()

    async def run_main(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        stdin: AsyncIterator[bytes] | None,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
        resume: bool = False,
    ) -> ExecResult:
        """The main command, its output recorded in `self.output`.

        With the guest agent and no stdin to feed, it runs detached in the guest: it outlives
        this engine, and a re-adopting engine re-attaches (`resume`) after the last entry it
        logged. Otherwise (stdin, or no python3 in the image) it is an ordinary exec.
        """
        assert self.output is not None
        output = self.output
        if stdin is not None or not self.has_agent:
            return await self.exec(
                argv,
                env=env,
                cwd=cwd,
                stdin=stdin,
                on_stdout=tee(output, "stdout", on_stdout),  # metered by `exec`
                on_stderr=tee(output, "stderr", on_stderr),
            )
        client = self.client
        if not resume:
            await client.start_main(argv, env=env, cwd=cwd)

        async def record(seq: int, stream: str, data: bytes) -> None:
            data = self.meter.admit(data)
            if not data:
                if self.meter.exhausted:  # a flood: stop reading it (see below)
                    raise _OutputCapped
                return
            output.append(stream, data, seq=seq)
            callback = on_stdout if stream == "stdout" else on_stderr
            if callback is not None:
                result = callback(data)
                if result is not None:
                    await result

        # A broken attach (the guest short of pids or memory, say) does not end the command:
        # attach again after what we logged. The supervisor's deadline, kill and container
        # watch decide when the sandbox is over.
        # Past the output cap nothing more is kept: rather than read and drop a flood (a core
        # of the engine's), detach and ask every second whether it ended, then attach after
        # its last record for the exit.
        delay = 0.1
        after = output.last_seq
        capped = False
        while True:
            try:
                if capped:
                    after = await _main_ended(client)
                    capped = False
                return await client.attach(after, on_output=record)
            except _OutputCapped:
                capped = True
            except AgentError:
                after = max(after, output.last_seq)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def exec(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        timeout: float | None = None,
        stdin: AsyncIterator[bytes] | bytes | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ExecResult:
        """Through the guest agent, or the runtime's own exec where the image has no python3.
        Output passes the sandbox's meter; without callbacks it is collected, capped too."""
        if self.has_agent:
            out, err = bytearray(), bytearray()
            result = await self.client.exec(
                argv,
                env=env,
                cwd=cwd,
                timeout=timeout,
                stdin=stdin,
                on_stdout=metered(self.meter, on_stdout, out),
                on_stderr=metered(self.meter, on_stderr, err),
            )
            return result.model_copy(update={"stdout": bytes(out), "stderr": bytes(err)})
        if stdin is not None and not isinstance(stdin, bytes):
            stdin = b"".join([chunk async for chunk in stdin])
        out, err = bytearray(), bytearray()
        async with self.using():
            result = await self.runtime.exec(
                self.sandbox.id,
                argv,
                env=env,
                cwd=cwd,
                uid=USER_UID,
                gid=USER_GID,
                stdin=stdin,
                on_stdout=metered(self.meter, on_stdout, out),
                on_stderr=metered(self.meter, on_stderr, err),
                timeout=timeout,
            )
        return result.model_copy(update={"stdout": bytes(out), "stderr": bytes(err)})


class _OutputCapped(Exception):
    """Raised from the attach callback to stop reading a main command's flood."""


async def _main_ended(client: AgentClient) -> int:
    """Wait until the main command has ended; its last record's seq."""
    while True:
        status = await client.main_status()
        if not status.get("running"):
            return int(status.get("last_seq") or 0)
        await asyncio.sleep(CAPPED_POLL_S)


class _UsedClient(AgentClient):
    """The agent client of a live sandbox: each connection wakes it first and counts as a use
    until it is closed (every call closes its connection)."""

    def __init__(self, live: LiveSandbox, *, wake: bool = True) -> None:
        super().__init__(str(live.socket_path))
        self._live = live
        self._wake = wake

    async def _connect(self) -> _Connection:
        live = self._live
        if live.waker is not None and self._wake:
            await live.waker()
        conn = await super()._connect()
        return _CountedConnection(conn, live)


class _CountedConnection(_Connection):
    def __init__(self, conn: _Connection, live: LiveSandbox) -> None:
        super().__init__(conn.reader, conn.writer)
        self._live: LiveSandbox | None = live
        live.in_use += 1

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self._live is not None:  # once, however often it is closed
                self._live.in_use -= 1
                self._live.last_used = time.time()
                self._live = None


@dataclass
class MainIO:
    """Where the main command's streams go (the CLI's `run`), all optional."""

    on_stdout: OutputCallback | None = None
    on_stderr: OutputCallback | None = None
    stdin: AsyncIterator[bytes] | None = None


def tee(log: OutputLog, stream: str, callback: OutputCallback | None) -> OutputCallback:
    """Record main-command output in the sandbox's log and pass it on to the caller."""

    async def write(data: bytes) -> None:
        log.append(stream, data)
        if callback is not None:
            result = callback(data)
            if result is not None:
                await result

    return write


def metered(
    meter: OutputMeter, callback: OutputCallback | None, keep: bytearray
) -> Callable[[bytes], Awaitable[None]]:
    """Pass what `meter` admits to `callback`, or keep it when there is none."""

    async def write(data: bytes) -> None:
        data = meter.admit(data)
        if not data:
            return
        if callback is None:
            keep.extend(data)
            return
        result = callback(data)
        if result is not None:
            await result

    return write
