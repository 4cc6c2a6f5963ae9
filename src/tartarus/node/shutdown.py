"""What a stopping server does with the sandboxes it runs: the shutdown policy.

`Settings.shutdown` (`tartarus server --shutdown`, `TARTARUS_SHUTDOWN`):

* **leave** does nothing: the sandboxes run on and the next server on the same state dir
  re-adopts them (paused ones stay paused; gVisor's get a new agent relay).
* **terminate** terminates every sandbox gracefully, all at once (SIGTERM, its grace period,
  kill), so the slowest grace bounds the wait.
* **hibernate** hibernates every sandbox whose runtime can checkpoint here (memory and files
  to disk, node/hibernate.py); the next server re-adopts it hibernated and its first use wakes
  it, processes and all. The others are left running as with `leave` (terminating what the
  next server can re-adopt would only lose it): those on a runtime that cannot checkpoint
  here, and those that cannot hibernate right now (a main command still runs, an exec is
  open). Pooled sandboxes are the pools' (left).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from tartarus.errors import TartarusError
from tartarus.models import SandboxState

if TYPE_CHECKING:
    from tartarus.node.engine import Engine

log = structlog.get_logger("tartarus.shutdown")

HIBERNATE_AT_ONCE = 4  # checkpoints write memory to disk: a few at a time


async def apply(engine: Engine, policy: str) -> dict[str, str]:
    """Apply `policy` to every sandbox `engine` runs; returns what became of each (by id)."""
    if policy == "terminate":
        return await _terminate(engine, engine.running_ids())
    if policy == "hibernate":
        return await _hibernate(engine)
    return {}


async def _terminate(engine: Engine, ids: list[str]) -> dict[str, str]:
    results = await asyncio.gather(*(engine.terminate(sid) for sid in ids), return_exceptions=True)
    done = {}
    for sid, result in zip(ids, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("terminating a sandbox failed", sandbox=sid, error=str(result))
            done[sid] = f"terminate failed: {result}"
        else:
            done[sid] = "terminated"
    return done


async def _hibernate(engine: Engine) -> dict[str, str]:
    gate = asyncio.Semaphore(HIBERNATE_AT_ONCE)

    async def one(sid: str) -> str:
        sandbox = engine.get(sid)
        if sandbox.state == SandboxState.HIBERNATED or sandbox.pool is not None:
            return "left"
        if not engine.may_hibernate(sandbox):  # its policy forbids it: it runs on
            return "left"
        try:
            async with gate:
                await engine.hibernate(sid)
            return "hibernated"
        except TartarusError as exc:  # cannot checkpoint here, busy, or it just ended
            log.info("left running", sandbox=sid, why=str(exc))
            return "left"

    ids = engine.running_ids()
    outcomes = await asyncio.gather(*(one(sid) for sid in ids), return_exceptions=True)
    done = {}
    for sid, outcome in zip(ids, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            log.warning("shutdown policy failed", sandbox=sid, error=str(outcome))
            outcome = f"failed: {outcome}"
        done[sid] = outcome
    return done
