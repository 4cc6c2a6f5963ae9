"""A minimal QMP client: QEMU's JSON control socket, for snapshots and restores.

QMP sends a greeting, wants `qmp_capabilities` first, and interleaves asynchronous events
with the answers; one command is in flight at a time here, so an answer is simply the next
line carrying `return` or `error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from tartarus.errors import RuntimeUnavailableError


class QMP:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, path: Path, timeout: float = 10.0) -> QMP:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
        qmp = cls(reader, writer)
        try:
            await asyncio.wait_for(reader.readline(), timeout)  # the greeting
            await qmp.execute("qmp_capabilities")
        except BaseException:
            await qmp.close()
            raise
        return qmp

    async def execute(self, command: str, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.writer.write(json.dumps(request).encode() + b"\n")
        await self.writer.drain()
        while True:
            line = await self.reader.readline()
            if not line:
                raise RuntimeUnavailableError(f"microvm: QEMU closed QMP during {command}")
            answer = json.loads(line)
            if "error" in answer:
                desc = answer["error"].get("desc", answer["error"])
                raise RuntimeUnavailableError(f"microvm: QMP {command} failed: {desc}")
            if "return" in answer:
                return answer["return"]

    async def wait_status(self, *statuses: str, timeout: float = 30.0) -> str:
        """Poll `query-status` until the VM is in one of `statuses`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = str((await self.execute("query-status"))["status"])
            if status in statuses:
                return status
            if loop.time() > deadline:
                raise RuntimeUnavailableError(f"microvm: the VM stayed {status!r}")
            await asyncio.sleep(0.005)

    async def wait_migration(self, timeout: float = 60.0) -> None:
        """Poll `query-migrate` until the outgoing migration completed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            info = await self.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled") or loop.time() > deadline:
                why = info.get("error-desc", status)
                raise RuntimeUnavailableError(f"microvm: saving the VM failed: {why}")
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
