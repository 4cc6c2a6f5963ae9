"""The output log of a sandbox's main command: what `logs` and `logs -f` read.

One JSON-lines file per sandbox under STATE_DIR/logs, appended by the supervising engine
and kept after the sandbox ends. Each entry has a sequence number, so a reader (an SSE
stream with Last-Event-ID) can resume after the last entry it saw. Followers in the same
process wake on each append; a follower in another process polls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import NamedTuple

POLL_S = 0.5


class LogEntry(NamedTuple):
    seq: int
    stream: str  # "stdout" | "stderr"
    data: bytes


class OutputLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._seq = _last_seq(path)  # a re-adopted sandbox's log continues where it stopped
        self._appended = asyncio.Event()

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, stream: str, data: bytes, seq: int | None = None) -> None:
        """Append an entry; `seq` is the guest journal's number when the output came from it."""
        self._seq = seq if seq is not None else self._seq + 1
        line = {"seq": self._seq, "stream": stream, "data": base64.b64encode(data).decode()}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
        self._appended.set()
        self._appended = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._appended.wait(), timeout)


async def read(
    path: Path,
    *,
    after: int = 0,
    follow: bool = False,
    ended: Callable[[], bool],
    live: OutputLog | None = None,
) -> AsyncIterator[LogEntry]:
    """Entries with seq > `after`; with `follow`, keep going until `ended()` and all is read."""
    offset = 0
    while True:
        finished = ended()  # checked before reading, so nothing written before it is missed
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        complete = chunk[: chunk.rfind(b"\n") + 1]
        offset += len(complete)
        for raw in complete.splitlines():
            entry = json.loads(raw)
            if entry["seq"] > after:
                yield LogEntry(entry["seq"], entry["stream"], base64.b64decode(entry["data"]))
        if not follow or finished:
            return
        if live is not None:
            await live.wait(POLL_S)
        else:
            await asyncio.sleep(POLL_S)


def _last_seq(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return 0
    for raw in reversed(lines):
        try:
            return int(json.loads(raw)["seq"])
        except (ValueError, KeyError):
            continue
    return 0
