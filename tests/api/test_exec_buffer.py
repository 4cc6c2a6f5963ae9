"""The exec event buffer's bounds, without a server (tartarus.api.execs)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tartarus.api.errors import ApiError
from tartarus.api.execs import EVENT_OVERHEAD, ExecRun


async def _take(record: ExecRun, after: int, n: int) -> list[int]:
    seen: list[int] = []
    async with contextlib.aclosing(record.follow(after)) as events:
        async for e in events:
            seen.append(e.seq)
            if len(seen) == n:
                break
    return seen


async def test_unsent_output_waits_and_sent_output_is_dropped() -> None:
    chunk = {"data": "x" * 100}
    size = EVENT_OVERHEAD + 100
    record = ExecRun("ex-1", "t", "sb", grace_s=60, max_bytes=3 * size)
    for _ in range(3):
        await record.append("stdout", chunk)
    blocked = asyncio.create_task(record.append("stdout", chunk))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # 3 unsent events fill the bound: the producer waits
    assert await _take(record, 0, 2) == [1, 2]  # a reader frees room...
    await asyncio.wait_for(blocked, 1)
    assert [e.seq for e in record.events] == [2, 3, 4]  # ...and the sent ones are dropped
    assert record.size <= 3 * size
    with pytest.raises(ApiError) as lost:
        record.resume_point(0)
    assert lost.value.status == 409
    assert record.resume_point(None) == 1  # from the oldest kept event
    assert record.resume_point(2) == 2
    with pytest.raises(ApiError) as ahead:
        record.resume_point(9)
    assert ahead.value.status == 400
    await record.finish("exit", {"exit_code": 0})
    assert await _take(record, 2, 10) == [3, 4, 5]
    assert record.done


async def test_grace_kills_an_unattached_exec() -> None:
    record = ExecRun("ex-2", "t", "sb", grace_s=0.05)
    record.task = asyncio.create_task(asyncio.sleep(60))
    record.start_grace()
    await asyncio.sleep(0.2)
    assert record.task.cancelled()
    assert "reconnected" in record.kill_reason
