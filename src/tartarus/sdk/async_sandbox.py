"""The asyncio SDK: `Sandbox` with `await`, `async for` and `async with`, running the same
`_api` descriptions through an `AsyncClient`. Callbacks may be plain functions or coroutines."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Literal, overload

import httpx2

from tartarus.sdk import _api, errors
from tartarus.sdk._client import AsyncClient, AsyncEventStream, Call
from tartarus.sdk.models import (
    CommandResult,
    Execution,
    FileEntry,
    LogEvent,
    SandboxInfo,
    SnapshotInfo,
)

__all__ = ["AsyncCommandHandle", "AsyncCommands", "AsyncFiles", "AsyncSandbox"]


class AsyncSandbox:
    """A remote sandbox. `async with await AsyncSandbox.create() as sb:` kills it on exit."""

    def __init__(self, info: SandboxInfo, client: AsyncClient) -> None:
        self._client = client
        self._info = info
        self.commands = AsyncCommands(self)
        self.files = AsyncFiles(self)

    @property
    def id(self) -> str:
        return self._info.id

    def __repr__(self) -> str:
        return f"<AsyncSandbox {self.id} {self._info.state}>"

    @classmethod
    async def create(
        cls,
        template: str | None = None,
        timeout: float = 300,
        cpu: float | None = None,
        memory_mb: int | None = None,
        pids: int | None = None,
        disk_mb: int | None = None,
        env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        runtime: str | None = None,
        command: str | Sequence[str] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        *,
        workdir: str | None = None,
        snapshot: str | None = None,
        seccomp: str | None = None,
        network: str | None = None,
        egress: Sequence[str] | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> AsyncSandbox:
        call = _api.create_sandbox(
            template=template,
            timeout=timeout,
            cpu=cpu,
            memory_mb=memory_mb,
            pids=pids,
            disk_mb=disk_mb,
            env=env,
            metadata=metadata,
            runtime=runtime,
            command=command,
            workdir=workdir,
            snapshot=snapshot,
            seccomp=seccomp,
            network=network,
            egress=egress,
        )
        return await cls._open(call, url, api_key, transport)

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> AsyncSandbox:
        return await cls._open(_api.get_sandbox(sandbox_id), url, api_key, transport)

    @classmethod
    async def _open(
        cls,
        call: Call[SandboxInfo],
        url: str | None,
        api_key: str | None,
        transport: httpx2.AsyncBaseTransport | None,
    ) -> AsyncSandbox:
        client = AsyncClient(url, api_key, transport=transport)
        try:
            return cls(await client.call(call), client)
        except BaseException:
            await client.aclose()
            raise

    @classmethod
    async def list(
        cls,
        state: str | Sequence[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> list[SandboxInfo]:
        async with AsyncClient(url, api_key, transport=transport) as client:
            items: list[SandboxInfo] = []
            cursor: str | None = None
            while True:
                call = _api.list_sandboxes(state=state, metadata=metadata, cursor=cursor)
                page = await client.call(call)
                items += page.items
                if not page.next_cursor:
                    return items
                cursor = page.next_cursor

    async def info(self) -> SandboxInfo:
        self._info = await self._client.call(_api.get_sandbox(self.id))
        return self._info

    async def kill(self) -> SandboxInfo:
        self._info = await self._client.call(_api.kill_sandbox(self.id))
        return self._info

    async def set_network(self, mode: str, egress: Sequence[str] = ()) -> SandboxInfo:
        """Change its network mode (allowlist <-> open) and egress rules while it runs."""
        self._info = await self._client.call(_api.set_network(self.id, mode, egress))
        return self._info

    async def set_timeout(self, seconds: float) -> SandboxInfo:
        self._info = await self._client.call(_api.set_timeout(self.id, seconds))
        return self._info

    async def snapshot(self, name: str | None = None, memory: bool = False) -> SnapshotInfo:
        """Save this sandbox's files (with `memory`, its processes too) as a snapshot;
        `create(snapshot=)` starts new sandboxes from it (by id, or by `name`)."""
        return await self._client.call(_api.snapshot_sandbox(self.id, name, memory))

    @classmethod
    async def list_snapshots(
        cls,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> builtins.list[SnapshotInfo]:
        """This key's tenant's snapshots, oldest first."""
        async with AsyncClient(url, api_key, transport=transport) as client:
            return await client.call(_api.list_snapshots())

    @classmethod
    async def delete_snapshot(
        cls,
        snapshot: str,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> SnapshotInfo:
        """Delete a snapshot (id or name) and its files; ConflictError while in use."""
        async with AsyncClient(url, api_key, transport=transport) as client:
            return await client.call(_api.delete_snapshot(snapshot))

    async def pause(self) -> SandboxInfo:
        self._info = await self._client.call(_api.pause_sandbox(self.id))
        return self._info

    async def resume(self) -> SandboxInfo:
        self._info = await self._client.call(_api.resume_sandbox(self.id))
        return self._info

    async def hibernate(self) -> SandboxInfo:
        self._info = await self._client.call(_api.hibernate_sandbox(self.id))
        return self._info

    async def wake(self) -> SandboxInfo:
        self._info = await self._client.call(_api.wake_sandbox(self.id))
        return self._info

    async def terminate(self, grace: float | None = None, checkpoint: bool = False) -> SandboxInfo:
        self._info = await self._client.call(_api.terminate_sandbox(self.id, grace, checkpoint))
        return self._info

    async def logs(self, follow: bool = False, after: int | None = None) -> AsyncIterator[LogEvent]:
        stream = await self._client.stream(_api.logs_request(self.id, follow=follow, after=after))
        async for event in stream:
            if event.event == "end":
                return
            item = _api.log_event(event)
            if item is not None:
                yield item

    async def run_code(
        self, code: str, context: str | None = None, timeout: float | None = None
    ) -> Execution:
        return await self._client.call(_api.run_code(self.id, code, context, timeout))

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.kill()
        finally:
            await self.close()


class AsyncCommands:
    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
        timeout: float | None = ...,
        on_stdout: _api.TextCallback | None = ...,
        on_stderr: _api.TextCallback | None = ...,
        stdin: bytes | str | None = ...,
        background: Literal[False] = ...,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        env: Mapping[str, str] | None = ...,
        cwd: str | None = ...,
        timeout: float | None = ...,
        on_stdout: _api.TextCallback | None = ...,
        on_stderr: _api.TextCallback | None = ...,
        stdin: bytes | str | None = ...,
        *,
        background: Literal[True],
    ) -> AsyncCommandHandle: ...

    async def run(
        self,
        cmd: str | Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        on_stdout: _api.TextCallback | None = None,
        on_stderr: _api.TextCallback | None = None,
        stdin: bytes | str | None = None,
        background: bool = False,
    ) -> CommandResult | AsyncCommandHandle:
        request = _api.exec_request(
            self._sandbox.id, cmd, env=env, cwd=cwd, timeout=timeout, stdin=stdin
        )
        stream = await self._sandbox._client.stream(request)
        collector = _api.ExecCollector(on_stdout, on_stderr)
        if background:
            sandbox_id, client = self._sandbox.id, self._sandbox._client

            async def kill(exec_id: str) -> None:
                await client.call(_api.kill_exec(sandbox_id, exec_id))

            return AsyncCommandHandle(stream, collector, kill)
        return await _consume(stream, collector)


async def _consume(stream: AsyncEventStream, collector: _api.ExecCollector) -> CommandResult:
    async for event in stream:
        returned = collector.feed(event)
        if inspect.isawaitable(returned):
            await returned
    return collector.result()


class AsyncCommandHandle:
    """A command running in the background as a task of the current event loop."""

    def __init__(
        self,
        stream: AsyncEventStream,
        collector: _api.ExecCollector,
        kill: Callable[[str], Awaitable[None]],
    ) -> None:
        self._collector = collector
        self._kill = kill
        self._task = asyncio.ensure_future(_consume(stream, collector))

    async def wait(self) -> CommandResult:
        """The result; raises `TartarusError` if it was killed."""
        try:
            return await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if self._task.cancelled():
                raise errors.TartarusError("the command was killed") from None
            raise

    async def kill(self) -> bool:
        """Kill the command and stop reading; False if it had ended."""
        if self._task.done():
            return False
        if self._collector.exec_id is not None:
            with contextlib.suppress(errors.TartarusError):
                await self._kill(self._collector.exec_id)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, errors.TartarusError):
            await self._task
        return True


class AsyncFiles:
    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    async def write(self, path: str, data: bytes | str) -> None:
        await self._sandbox._client.call(_api.write_file(self._sandbox.id, path, data))

    @overload
    async def read(self, path: str, format: Literal["text"] = ...) -> str: ...
    @overload
    async def read(self, path: str, format: Literal["bytes"]) -> bytes: ...

    async def read(self, path: str, format: Literal["text", "bytes"] = "text") -> str | bytes:
        data = await self._sandbox._client.call(_api.read_file(self._sandbox.id, path))
        return data if format == "bytes" else data.decode("utf-8", errors="replace")

    async def list(self, path: str) -> list[FileEntry]:
        return await self._sandbox._client.call(_api.list_files(self._sandbox.id, path))

    async def remove(self, path: str, recursive: bool = False) -> None:
        await self._sandbox._client.call(_api.remove_file(self._sandbox.id, path, recursive))
