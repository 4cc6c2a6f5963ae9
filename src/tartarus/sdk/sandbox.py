"""The blocking SDK. Each method runs one description from `_api` through a `Client`; the
async twin in `async_sandbox.py` runs the same descriptions, so the two cannot drift apart."""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Literal, overload

import httpx2

from tartarus.sdk import _api, errors
from tartarus.sdk._client import Call, Client, EventStream
from tartarus.sdk.models import (
    CommandResult,
    Execution,
    FileEntry,
    LogEvent,
    SandboxInfo,
    SnapshotInfo,
)

__all__ = ["CommandHandle", "Commands", "Files", "Sandbox"]


class Sandbox:
    """A remote sandbox. `with Sandbox.create() as sb:` kills it on exit."""

    def __init__(self, info: SandboxInfo, client: Client) -> None:
        self._client = client
        self._info = info
        self.commands = Commands(self)
        self.files = Files(self)

    @property
    def id(self) -> str:
        return self._info.id

    def __repr__(self) -> str:
        return f"<Sandbox {self.id} {self._info.state}>"

    @classmethod
    def create(
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
        transport: httpx2.BaseTransport | None = None,
    ) -> Sandbox:
        """Start a sandbox (running when this returns); resources default to the template's.
        `template` defaults to "python", or with `snapshot` (id or name) to the snapshot's,
        whose files the new sandbox starts with. `seccomp` names a profile (`strict`, a
        generated one); the default deny-list profile otherwise. `network` is "none" (the
        default), "allowlist" (only `egress`: CIDRs and domain names) or "open"."""
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
        return cls._open(call, url, api_key, transport)

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx2.BaseTransport | None = None,
    ) -> Sandbox:
        """Attach to an existing sandbox of this key's tenant (NotFoundError otherwise)."""
        return cls._open(_api.get_sandbox(sandbox_id), url, api_key, transport)

    @classmethod
    def _open(
        cls,
        call: Call[SandboxInfo],
        url: str | None,
        api_key: str | None,
        transport: httpx2.BaseTransport | None,
    ) -> Sandbox:
        client = Client(url, api_key, transport=transport)
        try:
            return cls(client.call(call), client)
        except BaseException:
            client.close()
            raise

    @classmethod
    def list(
        cls,
        state: str | Sequence[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx2.BaseTransport | None = None,
    ) -> list[SandboxInfo]:
        """Every matching sandbox, newest first (all pages). Without `state`: the live ones;
        `state="all"` for every state."""
        with Client(url, api_key, transport=transport) as client:
            items: list[SandboxInfo] = []
            cursor: str | None = None
            while True:
                page = client.call(
                    _api.list_sandboxes(state=state, metadata=metadata, cursor=cursor)
                )
                items += page.items
                if not page.next_cursor:
                    return items
                cursor = page.next_cursor

    def info(self) -> SandboxInfo:
        """A fresh record, with its state events."""
        self._info = self._client.call(_api.get_sandbox(self.id))
        return self._info

    def kill(self) -> SandboxInfo:
        """Kill the sandbox (a no-op on one that already ended); returns the final record."""
        self._info = self._client.call(_api.kill_sandbox(self.id))
        return self._info

    def set_network(self, mode: str, egress: Sequence[str] = ()) -> SandboxInfo:
        """Change its network mode (allowlist <-> open) and egress rules while it runs:
        new connections follow them at once."""
        self._info = self._client.call(_api.set_network(self.id, mode, egress))
        return self._info

    def set_timeout(self, seconds: float) -> SandboxInfo:
        """Let it live `seconds` from now."""
        self._info = self._client.call(_api.set_timeout(self.id, seconds))
        return self._info

    def snapshot(self, name: str | None = None, memory: bool = False) -> SnapshotInfo:
        """Save this sandbox's files (with `memory`, its processes too) as a snapshot;
        `create(snapshot=)` starts new sandboxes from it (by id, or by `name`)."""
        return self._client.call(_api.snapshot_sandbox(self.id, name, memory))

    @classmethod
    def list_snapshots(
        cls,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx2.BaseTransport | None = None,
    ) -> builtins.list[SnapshotInfo]:
        """This key's tenant's snapshots, oldest first."""
        with Client(url, api_key, transport=transport) as client:
            return client.call(_api.list_snapshots())

    @classmethod
    def delete_snapshot(
        cls,
        snapshot: str,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx2.BaseTransport | None = None,
    ) -> SnapshotInfo:
        """Delete a snapshot (id or name) and its files; ConflictError while in use."""
        with Client(url, api_key, transport=transport) as client:
            return client.call(_api.delete_snapshot(snapshot))

    def pause(self) -> SandboxInfo:
        """Freeze every process, memory kept; the timeout stops counting until `resume`.
        Commands, files and code answer ConflictError while paused."""
        self._info = self._client.call(_api.pause_sandbox(self.id))
        return self._info

    def resume(self) -> SandboxInfo:
        """Thaw a paused sandbox; its deadline moves by the time it spent paused."""
        self._info = self._client.call(_api.resume_sandbox(self.id))
        return self._info

    def hibernate(self) -> SandboxInfo:
        """Save its memory and files to disk and free what it holds; the timeout stops
        counting. Any later command, file or code call wakes it first (or call `wake`)."""
        self._info = self._client.call(_api.hibernate_sandbox(self.id))
        return self._info

    def wake(self) -> SandboxInfo:
        """Restore a hibernated sandbox, processes and memory as they were."""
        self._info = self._client.call(_api.wake_sandbox(self.id))
        return self._info

    def terminate(self, grace: float | None = None, checkpoint: bool = False) -> SandboxInfo:
        """SIGTERM every process, wait up to `grace` seconds (default: the template's, else
        the server's), then kill; returns the final record, whose `reason` says which. With
        `checkpoint`, a snapshot is taken first and the reason names it."""
        self._info = self._client.call(_api.terminate_sandbox(self.id, grace, checkpoint))
        return self._info

    def logs(self, follow: bool = False, after: int | None = None) -> Iterator[LogEvent]:
        """The main command's output; with `follow`, until the sandbox ends."""
        for event in self._client.stream(_api.logs_request(self.id, follow=follow, after=after)):
            if event.event == "end":
                return
            item = _api.log_event(event)
            if item is not None:
                yield item

    def run_code(
        self, code: str, context: str | None = None, timeout: float | None = None
    ) -> Execution:
        """Run Python in the sandbox's interpreter; `value` is the repr of the last line."""
        return self._client.call(_api.run_code(self.id, code, context, timeout))

    def close(self) -> None:
        """Release the HTTP connections (the sandbox keeps running)."""
        self._client.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.kill()
        finally:
            self.close()


class Commands:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    @overload
    def run(
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
    def run(
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
    ) -> CommandHandle: ...

    def run(
        self,
        cmd: str | Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        on_stdout: _api.TextCallback | None = None,
        on_stderr: _api.TextCallback | None = None,
        stdin: bytes | str | None = None,
        background: bool = False,
    ) -> CommandResult | CommandHandle:
        """Run `cmd` (a string goes through `sh -c`). Callbacks get text as it arrives. A
        non-zero exit is a result, not an error. `background=True` returns a handle."""
        request = _api.exec_request(
            self._sandbox.id, cmd, env=env, cwd=cwd, timeout=timeout, stdin=stdin
        )
        stream = self._sandbox._client.stream(request)
        collector = _api.ExecCollector(on_stdout, on_stderr)
        sandbox_id, client = self._sandbox.id, self._sandbox._client

        def kill(exec_id: str) -> None:
            client.call(_api.kill_exec(sandbox_id, exec_id))

        if background:
            return CommandHandle(stream, collector, kill)
        for event in stream:  # here, not on a thread: a thread's hand-offs cost milliseconds
            collector.feed(event)
        return collector.result()


class CommandHandle:
    """A command running in the background; its output is read on a daemon thread."""

    def __init__(
        self,
        stream: EventStream,
        collector: _api.ExecCollector,
        kill: Callable[[str], None],
    ) -> None:
        self._stream = stream
        self._collector = collector
        self._kill = kill
        self._result: CommandResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._consume, name="tartarus-exec", daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        try:
            for event in self._stream:
                self._collector.feed(event)
            if not self._stream.aborted:
                self._result = self._collector.result()
        except BaseException as exc:
            self._error = exc

    def wait(self, timeout: float | None = None) -> CommandResult:
        """The result; raises `TimeoutError` if it is still running after `timeout` seconds
        and `TartarusError` if it was killed."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise errors.TimeoutError(f"the command is still running after {timeout}s")
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise errors.TartarusError("the command was killed")
        return self._result

    def kill(self) -> bool:
        """Kill the command and stop reading; False if it had ended."""
        if not self._thread.is_alive():
            return False
        if self._collector.exec_id is not None:
            with contextlib.suppress(errors.TartarusError):
                self._kill(self._collector.exec_id)
        self._stream.abort()
        self._thread.join()
        return True


class Files:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def write(self, path: str, data: bytes | str) -> None:
        """Create or replace a file (a str is written as UTF-8)."""
        self._sandbox._client.call(_api.write_file(self._sandbox.id, path, data))

    @overload
    def read(self, path: str, format: Literal["text"] = ...) -> str: ...
    @overload
    def read(self, path: str, format: Literal["bytes"]) -> bytes: ...

    def read(self, path: str, format: Literal["text", "bytes"] = "text") -> str | bytes:
        data = self._sandbox._client.call(_api.read_file(self._sandbox.id, path))
        return data if format == "bytes" else data.decode("utf-8", errors="replace")

    def list(self, path: str) -> list[FileEntry]:
        return self._sandbox._client.call(_api.list_files(self._sandbox.id, path))

    def remove(self, path: str, recursive: bool = False) -> None:
        self._sandbox._client.call(_api.remove_file(self._sandbox.id, path, recursive))
