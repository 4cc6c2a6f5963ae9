"""Hypnos's idle monitor: sandboxes nobody used for a while hibernate by themselves.

"Idle" is what `LiveSandbox` counts: no agent connection or runtime exec open (an exec, a
stream, a file or code call) and none ended for `Settings.idle_hibernate_s` seconds
(`TARTARUS_IDLE_HIBERNATE_S`, default 600, 0 off), counted from the last use, the hand-out
or the wake. Only runtimes whose probe checkpointed and restored a real sandbox take part;
sandboxes running a main command and pooled ones never sleep (node/hibernate.py says why).
The next use wakes a hibernated sandbox, so nobody has to know it slept.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from tartarus.errors import TartarusError
from tartarus.node import hibernate, sleepfiles

if TYPE_CHECKING:
    from tartarus.node.engine import Engine
    from tartarus.node.live import LiveSandbox

log = structlog.get_logger("tartarus.hypnos")

MIN_SCAN_S, MAX_SCAN_S = 0.2, 30.0  # how often it looks: a quarter of the idle time


def idle_for(live: LiveSandbox) -> float:
    """Seconds since the sandbox was last used (or handed out, or woken)."""
    started = live.sandbox.started_at
    since = max(live.last_used, started.timestamp() if started is not None else 0.0)
    return time.time() - since


def _sleepy(live: LiveSandbox, idle_s: float) -> bool:
    """Idle long enough, and nothing about it forbids a hibernation right now."""
    if live.in_use or live.container_away or idle_for(live) < idle_s:
        return False
    return hibernate.refusal(live) is None


async def monitor(engine: Engine) -> None:
    """Hibernate every sandbox idle for `idle_hibernate_s` whose runtime can checkpoint."""
    idle_s = engine.settings.idle_hibernate_s
    if idle_s <= 0:
        return
    interval = min(max(idle_s / 4, MIN_SCAN_S), MAX_SCAN_S)
    while True:
        await asyncio.sleep(interval)
        for live in list(engine._live.values()):
            if not _sleepy(live, idle_s) or not sleepfiles.Layer(live.directory).reachable():
                continue
            if not engine.may_hibernate(live.sandbox):  # its policy says no (Themis)
                live.last_used = time.time()  # asked again after another idle period
                continue
            try:
                if not (await engine.runtimes.capabilities(live.runtime.name)).checkpoint:
                    continue
                async with live.lifecycle_lock:
                    if not _sleepy(live, idle_s):  # used meanwhile
                        continue
                    await hibernate.hibernate_locked(engine, live)
                log.info("hibernated an idle sandbox", sandbox=live.sandbox.id, idle_s=idle_s)
            except (TartarusError, OSError) as exc:
                live.last_used = time.time()  # not again before another idle period
                log.warning(
                    "could not hibernate an idle sandbox", sandbox=live.sandbox.id, error=str(exc)
                )
