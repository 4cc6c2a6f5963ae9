"""The host end of a microVM's agent channel: the engine's socket, multiplexed onto one port.

The engine hands every runtime a listening socket and connects to it for each agent call
(one request per connection). A VM's only channel is a virtio-serial port whose host side is
QEMU's unix socket, one byte stream; guest/serial.py (PID 1 in the guest) speaks the framing
on the other end (see its docstring). This side accepts the engine's connections, opens each
in the guest, and pumps both ways. It lives in the engine's event loop, like gVisor's relay:
a re-adopting engine connects anew, and its HELLO makes the guest drop the dead engine's
connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tartarus.errors import RuntimeUnavailableError
from tartarus.guest.serial import CLOSE, DATA, EOF, FRAME, HELLO, MAX_BODY, OPEN, READY, TIME
from tartarus.runtimes.base import GuestNetwork


class Channel:
    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._clients: dict[int, _Client] = {}
        self._next_id = 1
        self._server: asyncio.Server | None = None
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()
        self.closed = asyncio.Event()  # the port's connection ended (QEMU is gone)
        self.ready_info: dict[str, Any] = {}

    async def connect(
        self,
        path: Path,
        agent: dict[str, Any] | None = None,
        network: GuestNetwork | None = None,
    ) -> None:
        """Connect to QEMU's chardev socket and say HELLO: clock and entropy for the guest,
        `agent` settings (deadline, env) for an agent that runs already (a clone), and the
        address of the guest's NIC (none: it stays as it is)."""
        self._reader, self._writer = await asyncio.open_unix_connection(str(path))
        hello = self._clock()
        if agent is not None:
            hello["agent"] = agent
        if network is not None:
            hello["network"] = dataclasses.asdict(network)
        self._send(HELLO, 0, json.dumps(hello).encode())
        self._pump = asyncio.create_task(self._read_port())

    @staticmethod
    def _clock() -> dict[str, Any]:
        return {"time": time.time(), "entropy": os.urandom(64).hex()}

    async def send_time(self) -> None:
        """Set the guest's clock (and reseed its RNG) keeping the connections: after a pause."""
        self._send(TIME, 0, json.dumps(self._clock()).encode())
        if self._writer is not None:
            await self._writer.drain()

    async def wait_ready(self) -> None:
        """Until the guest's agent accepts connections (READY); raises ConnectionError if the
        port closes first (the VM ended), RuntimeUnavailableError if the guest's NIC could
        not be given its address."""
        ready = asyncio.ensure_future(self.ready.wait())
        closed = asyncio.ensure_future(self.closed.wait())
        try:
            await asyncio.wait({ready, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            closed.cancel()
        if not self.ready.is_set():
            raise ConnectionError("the VM closed its agent port before the agent was ready")
        if error := self.ready_info.get("network_error"):  # a sandbox without its network
            raise RuntimeUnavailableError(f"microvm: the guest could not set its NIC up: {error}")

    async def serve(self, listener: socket.socket) -> None:
        """Accept the engine's connections on `listener` (now ours) and relay each."""
        listener.setblocking(False)
        self._server = await asyncio.start_unix_server(self._relay, sock=listener)

    def _send(self, kind: int, cid: int, body: bytes = b"") -> None:
        if self._writer is None or self._writer.is_closing():
            return
        for i in range(0, max(len(body), 1), MAX_BODY):
            part = body[i : i + MAX_BODY]
            self._writer.write(FRAME.pack(kind, cid, len(part)) + part)

    async def _read_port(self) -> None:
        assert self._reader is not None
        try:
            while True:
                kind, cid, size = FRAME.unpack(await self._reader.readexactly(FRAME.size))
                body = await self._reader.readexactly(size) if size else b""
                if kind == READY:
                    with contextlib.suppress(ValueError):
                        self.ready_info = json.loads(body.decode())
                    self.ready.set()
                    continue
                client = self._clients.get(cid)
                if client is None:
                    continue
                if kind == DATA and not client.writer.is_closing():  # the engine reads
                    client.writer.write(body)  # eagerly: a drain would hold up the others
                elif kind == EOF:
                    with contextlib.suppress(OSError, RuntimeError):
                        if client.writer.can_write_eof():
                            client.writer.write_eof()
                    client.done.set()
                elif kind == CLOSE:
                    client.writer.close()
                    client.done.set()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            for client in self._clients.values():
                client.writer.close()
                client.done.set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        cid = self._next_id
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        client = self._clients[cid] = _Client(writer, asyncio.Event())
        if self.closed.is_set():
            client.done.set()
        self._send(OPEN, cid)
        try:
            while chunk := await reader.read(MAX_BODY):
                self._send(DATA, cid, chunk)
                if self._writer is not None:
                    await self._writer.drain()
            self._send(EOF, cid)
            await client.done.wait()  # the guest's EOF (or CLOSE) ends the connection
        except (ConnectionError, OSError, asyncio.CancelledError):
            self._send(CLOSE, cid)
        finally:
            self._clients.pop(cid, None)
            writer.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump


@dataclass
class _Client:
    writer: asyncio.StreamWriter
    done: asyncio.Event  # the guest has ended its side
