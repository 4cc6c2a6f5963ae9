"""Host-side asyncio client for the guest agent (see `tartarus.guest.agent`).

Why: the node engine talks to every sandbox through this one class, whatever the runtime, so
protocol details (framing, one request per connection, error frames) stay in one place and the
rest of the engine sees typed results and `tartarus.errors` exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from tartarus.errors import (
    AgentError,
    AgentTimeoutError,
    InvalidRequestError,
    NotFoundError,
    TartarusError,
)
from tartarus.guest.protocol import (
    PREFIX_SIZE,
    ProtocolError,
    decode_header,
    decode_prefix,
    encode_frame,
)
from tartarus.models import ExecResult

OutputCallback = Callable[[bytes], Awaitable[None] | None]
# Output of the main command: (seq, "stdout" | "stderr", data).
MainOutputCallback = Callable[[int, str, bytes], Awaitable[None] | None]
Frame = tuple[dict[str, Any], bytes]

WRITE_CHUNK = 1 << 20
# How long past a request's own timeout we wait for the agent to answer before giving up on it.
TIMEOUT_SLACK = 10.0


class CodeError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    value: str
    traceback: str = ""


class CodeResult(BaseModel):
    """Outcome of `run_code`: output (for streams without a callback), repr of the last
    expression, or the error."""

    model_config = ConfigDict(extra="forbid")

    stdout: str = ""
    stderr: str = ""
    value: str | None = None
    error: CodeError | None = None


def _raise_error_frame(header: dict[str, Any]) -> None:
    code = header.get("code")
    message = str(header.get("message") or "the agent reported an error")
    if code == "not_found":
        raise NotFoundError(message)
    if code in ("invalid", "permission"):
        raise InvalidRequestError(message)
    raise AgentError(f"guest agent error: {message}")


async def _call(callback: OutputCallback, data: bytes) -> None:
    result = callback(data)
    if inspect.isawaitable(result):
        await result


class _Connection:
    """One request/response exchange with the agent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        try:
            self.writer.write(encode_frame(header, body))
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise AgentError(f"lost the connection to the guest agent: {exc}") from exc

    async def recv(self) -> Frame:
        """Next frame; raises AgentError on EOF, and the mapped error on an error frame."""
        try:
            prefix = await self.reader.readexactly(PREFIX_SIZE)
            hlen, blen = decode_prefix(prefix)
            data = await self.reader.readexactly(hlen + blen)
            header = decode_header(data[:hlen])
        except asyncio.IncompleteReadError:
            raise AgentError("the guest agent closed the connection early") from None
        except ProtocolError as exc:
            raise AgentError(f"malformed frame from the guest agent: {exc}") from None
        except (ConnectionError, OSError) as exc:
            raise AgentError(f"lost the connection to the guest agent: {exc}") from exc
        if header.get("type") == "error":
            _raise_error_frame(header)
        return header, data[hlen:]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class AgentClient:
    """Talks to one sandbox's guest agent over its AF_UNIX socket; one connection per call."""

    def __init__(self, socket_path: str, connect_timeout: float = 5.0) -> None:
        self.socket_path = str(socket_path)
        self.connect_timeout = connect_timeout

    async def _connect(self) -> _Connection:
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.005
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket_path)
                return _Connection(reader, writer)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if time.monotonic() + delay > deadline:
                    raise AgentTimeoutError(
                        f"guest agent at {self.socket_path} not reachable after "
                        f"{self.connect_timeout:g}s: {exc.strerror or exc}"
                    ) from exc
            except OSError as exc:
                if exc.errno == errno.EAGAIN and time.monotonic() + delay <= deadline:
                    pass  # listen backlog full: retry
                else:
                    raise AgentError(f"cannot connect to the guest agent: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def _request(self, header: dict[str, Any]) -> _Connection:
        conn = await self._connect()
        try:
            await conn.send(header)
        except BaseException:
            await conn.close()
            raise
        return conn

    @staticmethod
    def _expect(header: dict[str, Any], *types: str) -> str:
        kind = header.get("type")
        if kind not in types:
            raise AgentError(f"unexpected frame {kind!r} from the guest agent")
        return str(kind)

    async def _call(self, request: dict[str, Any], answer: str = "ok") -> dict[str, Any]:
        """A request with one answer frame of type `answer`; returns that frame."""
        conn = await self._request(request)
        try:
            header, _ = await conn.recv()
            self._expect(header, answer)
            return header
        finally:
            await conn.close()

    async def ping(self) -> dict[str, Any]:
        return await self._call({"op": "ping"}, "pong")

    async def set_env(self, env: dict[str, str]) -> None:
        """Replace the environment the guest starts interpreters and commands from."""
        await self._call({"op": "env", "env": env})

    async def set_deadline(self, deadline: float | None) -> None:
        """Move the guest's own backstop deadline (epoch seconds; None: no deadline)."""
        await self._call({"op": "deadline", "deadline": deadline})

    async def exec(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: AsyncIterator[bytes] | bytes | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ExecResult:
        """Run a command to completion. Cancelling the task kills the command in the guest."""
        request = {
            "op": "exec",
            "argv": list(argv),
            "env": env or {},
            "cwd": cwd,
            "timeout": timeout,
            "stdin": stdin is not None,
        }
        conn = await self._request(request)
        feeder: asyncio.Task[None] | None = None
        try:
            if stdin is not None:
                feeder = asyncio.create_task(self._feed_stdin(conn, stdin))
            async with asyncio.timeout(timeout + TIMEOUT_SLACK if timeout else None):
                return await self._exec_frames(conn, on_stdout, on_stderr)
        except TimeoutError:
            raise AgentTimeoutError("the guest agent did not finish the command in time") from None
        finally:
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError, TartarusError):
                    await feeder
            await conn.close()

    @staticmethod
    async def _feed_stdin(conn: _Connection, stdin: AsyncIterator[bytes] | bytes) -> None:
        if isinstance(stdin, (bytes, bytearray, memoryview)):
            data = bytes(stdin)
            for i in range(0, len(data), WRITE_CHUNK):
                await conn.send({"type": "stdin"}, data[i : i + WRITE_CHUNK])
        else:
            async for chunk in stdin:
                for i in range(0, len(chunk), WRITE_CHUNK):
                    await conn.send({"type": "stdin"}, bytes(chunk[i : i + WRITE_CHUNK]))
        await conn.send({"type": "stdin_eof"})

    @staticmethod
    def _exit_result(header: dict[str, Any], out: bytes, err: bytes) -> ExecResult:
        sig = header.get("signal")
        exit_code = header.get("exit_code")
        if isinstance(sig, int):
            exit_code = 128 + sig
        if not isinstance(exit_code, int):
            raise AgentError("exit frame without an exit code or signal")
        return ExecResult(
            exit_code=exit_code,
            stdout=out,
            stderr=err,
            signal=sig if isinstance(sig, int) else None,
            timed_out=bool(header.get("timed_out")),
        )

    async def start_main(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        """Start the sandbox's main command (once per agent) detached from this connection.

        Its output is journaled by the agent; follow it with `attach`. A command that cannot
        be started still counts as started: its journal holds the error and exit 127/126.
        """
        request = {"op": "main", "argv": list(argv), "env": env or {}, "cwd": cwd, "stdin": False}
        conn = await self._request(request)
        try:
            header, _ = await conn.recv()
            self._expect(header, "started")
        finally:
            await conn.close()

    async def attach(
        self, after: int = 0, on_output: MainOutputCallback | None = None
    ) -> ExecResult:
        """Replay the main command's output after seq `after`, follow it, return its result.

        Without `on_output` the output is collected into the result. Cancelling only detaches:
        the command keeps running. Raises NotFoundError if no main command was started and
        AgentError if the connection drops.
        """
        conn = await self._request({"op": "attach", "after": after})
        out = bytearray()
        err = bytearray()
        try:
            while True:
                header, body = await conn.recv()
                kind = self._expect(header, "stdout", "stderr", "gap", "exit")
                if kind == "exit":
                    return self._exit_result(header, bytes(out), bytes(err))
                if kind == "gap":
                    continue  # older records were dropped; the seq jump shows it
                seq = header.get("seq")
                if not isinstance(seq, int):
                    raise AgentError(f"{kind} frame without a seq from the guest agent")
                if on_output is not None:
                    result = on_output(seq, kind, body)
                    if inspect.isawaitable(result):
                        await result
                elif kind == "stdout":
                    out += body
                else:
                    err += body
        finally:
            await conn.close()

    async def main_status(self) -> dict[str, Any]:
        """The main command's state: the agent's `main` frame (started, pid, running,
        exit_code, signal, last_seq)."""
        return await self._call({"op": "main_status"}, "main")

    async def _exec_frames(
        self,
        conn: _Connection,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
    ) -> ExecResult:
        out = bytearray()
        err = bytearray()
        while True:
            header, body = await conn.recv()
            kind = self._expect(header, "started", "stdout", "stderr", "exit")
            if kind == "stdout":
                if on_stdout is not None:
                    await _call(on_stdout, body)
                else:
                    out += body
            elif kind == "stderr":
                if on_stderr is not None:
                    await _call(on_stderr, body)
                else:
                    err += body
            elif kind == "exit":
                return self._exit_result(header, bytes(out), bytes(err))

    async def read_file(self, path: str) -> bytes:
        conn = await self._request({"op": "read", "path": path})
        try:
            data = bytearray()
            while True:
                header, body = await conn.recv()
                if self._expect(header, "data", "end") == "end":
                    return bytes(data)
                data += body
        finally:
            await conn.close()

    async def write_file(
        self, path: str, data: bytes, mode: int | None = None, *, append: bool = False
    ) -> int:
        """Write (atomically, unless appending) and return the number of bytes written."""
        conn = await self._request({"op": "write", "path": path, "mode": mode, "append": append})
        try:
            try:
                for i in range(0, len(data), WRITE_CHUNK):
                    await conn.send({"type": "data"}, bytes(data[i : i + WRITE_CHUNK]))
                await conn.send({"type": "end"})
            except AgentError:
                pass  # the agent may have answered early with an error: read it below
            header, _ = await conn.recv()
            self._expect(header, "ok")
            return int(header.get("size") or 0)
        finally:
            await conn.close()

    async def list_dir(self, path: str) -> list[dict[str, Any]]:
        header = await self._call({"op": "list", "path": path}, "entries")
        entries = header.get("entries")
        if not isinstance(entries, list):
            raise AgentError("malformed entries frame from the guest agent")
        return entries

    async def remove(self, path: str, recursive: bool = False) -> None:
        await self._call({"op": "remove", "path": path, "recursive": recursive})

    async def run_code(
        self,
        code: str,
        *,
        context: str | None = None,
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> CodeResult:
        """Run Python in a persistent interpreter context (default "default")."""
        request = {"op": "run_code", "code": code, "context": context, "timeout": timeout}
        conn = await self._request(request)
        out = bytearray()
        err = bytearray()
        try:
            async with asyncio.timeout(timeout + TIMEOUT_SLACK if timeout else None):
                while True:
                    header, body = await conn.recv()
                    kind = self._expect(header, "stdout", "stderr", "result")
                    if kind == "stdout":
                        if on_stdout is not None:
                            await _call(on_stdout, body)
                        else:
                            out += body
                    elif kind == "stderr":
                        if on_stderr is not None:
                            await _call(on_stderr, body)
                        else:
                            err += body
                    else:
                        error = header.get("error")
                        value = header.get("value")
                        try:
                            return CodeResult(
                                stdout=out.decode("utf-8", "replace"),
                                stderr=err.decode("utf-8", "replace"),
                                value=value if isinstance(value, str) else None,
                                error=CodeError.model_validate(error) if error else None,
                            )
                        except ValueError as exc:
                            raise AgentError(f"malformed result frame: {exc}") from None
        except TimeoutError:
            raise AgentTimeoutError("the guest agent did not finish the code in time") from None
        finally:
            await conn.close()
