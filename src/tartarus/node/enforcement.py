"""Erinyes: usage budgets watched while a sandbox runs, and what happens when one is crossed.

The kernel enforces the hard limits (cgroups, the layer's tmpfs). What no cgroup expresses
is a budget over a sandbox's life: CPU seconds consumed, memory above a soft mark, bytes in
the writable layer, bytes of output, bytes over the network (`models/enforcement.py`).
One loop watches every sandbox whose spec has `enforcement`, once a second, reading what
the kernel already counts (cpuacct, the memory cgroup, statvfs of the layer's tmpfs, the
veth counters of node/network.py); it is not running at all while nothing is watched.

Output is metered where it flows (`OutputMeter`, used by node/live.py for the main command
and every exec): past the node-wide cap (`TARTARUS_MAX_OUTPUT_BYTES`) or the budget, output
is dropped after one marker line, so a flood can neither fill the host's disk nor the
engine's memory; the budget's action then runs on the next tick.

Actions: `kill` ends the sandbox with reason `killed: <what>`; `throttle` lowers the CPU
quota (runtimes that can resize a running sandbox) or stops accepting output, and kills
where neither applies; `hibernate` checkpoints where the runtime can and kills otherwise.
The reason says which happened and why. Each action is a sandbox event and an audit record
(`enforcement.<action>`), and each budget acts once per sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from tartarus.errors import TartarusError
from tartarus.models import Enforcement, EnforcementAction
from tartarus.runtimes import cgroups
from tartarus.runtimes.bundle import CGROUP_PARENT
from tartarus.store import audit
from tartarus.store.sandboxes import add_event

if TYPE_CHECKING:
    from tartarus.node.engine import Engine
    from tartarus.node.live import LiveSandbox

log = structlog.get_logger("tartarus.erinyes")

TICK_S = 1.0
THROTTLE_FACTOR = 0.1  # a throttled sandbox keeps a tenth of its CPU quota
MIN_CPU = 0.01
MIB = 1024 * 1024


@dataclass
class OutputMeter:
    """Counts a sandbox's output (main command and execs together) and decides what of it
    is passed on: everything up to `limit()`, then one marker, then nothing."""

    cap: int  # the node's cap per sandbox
    budget: int | None = None  # Erinyes' output_bytes, if any
    total: int = 0  # everything produced, dropped bytes included
    stopped: bool = False  # throttled: accept nothing more
    marked: bool = False

    def limit(self) -> int:
        if self.stopped:
            return 0
        return self.cap if self.budget is None else min(self.cap, self.budget)

    def admit(self, data: bytes) -> bytes:
        """The part of `data` to pass on (and log)."""
        start = self.total
        self.total += len(data)
        room = self.limit() - start
        if room >= len(data):
            return data
        kept = data[: max(room, 0)]
        if self.marked:
            return kept
        self.marked = True
        return kept + f"\n[tartarus: output truncated after {self.limit()} bytes]\n".encode()

    @property
    def exhausted(self) -> bool:
        """Nothing more will be passed on (the marker went out already)."""
        return self.marked and self.total >= self.limit()


@dataclass
class _Watch:
    live: LiveSandbox
    limits: Enforcement
    acted: set[str] = field(default_factory=set)


class Erinyes:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._watched: dict[str, _Watch] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, live: LiveSandbox) -> None:
        """Apply the node's output cap to `live`, and watch it if its spec has budgets
        (idempotent: a pooled sandbox is watched again when handed out)."""
        live.meter.cap = self.engine.settings.max_output_bytes
        limits = live.sandbox.spec.enforcement
        if limits is None:
            return
        live.meter.budget = limits.output_bytes
        self._watched.setdefault(live.sandbox.id, _Watch(live, limits))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop())

    def unwatch(self, sandbox_id: str) -> None:
        self._watched.pop(sandbox_id, None)

    async def close(self) -> None:
        self._watched.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while self._watched:
            await asyncio.sleep(TICK_S)
            for sid, watch in list(self._watched.items()):
                if watch.live.done.is_set() or watch.live.killed.is_set():
                    self._watched.pop(sid, None)
                    continue
                if watch.live.container_away or watch.live.sandbox.pool is not None:
                    continue  # hibernated (or being woken), or waiting in a pool
                try:
                    await self.check(watch)
                except Exception as exc:  # one sandbox's trouble must not stop the others
                    log.warning("enforcement check failed", sandbox=sid, error=repr(exc))

    async def check(self, watch: _Watch) -> None:
        for what, used, limit in usage(watch.live, watch.limits):
            if what not in watch.acted and used > limit:
                watch.acted.add(what)
                await self.act(watch.live, what, watch.limits.action, used, limit)
                if watch.live.killed.is_set():
                    self._watched.pop(watch.live.sandbox.id, None)
                    return

    async def act(
        self, live: LiveSandbox, what: str, action: EnforcementAction, used: int, limit: int
    ) -> None:
        """Carry out `action` for budget `what`; falls back to a kill (and says so)."""
        sid = live.sandbox.id
        done, note = EnforcementAction.KILL, ""
        if action == EnforcementAction.THROTTLE:
            note = await self._throttle(live, what)
            if not note:
                done = EnforcementAction.THROTTLE
        elif action == EnforcementAction.HIBERNATE:
            try:
                await self.engine.hibernate(sid)
                done = EnforcementAction.HIBERNATE
            except TartarusError as exc:
                note = f"hibernate impossible: {exc}"
        reason = f"killed: {what}" + (f" ({note})" if note else "")
        shown = reason if done == EnforcementAction.KILL else f"{done.value}: {what}"
        data: dict[str, Any] = {
            "reason": shown,  # the one line `inspect` shows
            "budget": what,
            "used": used,
            "limit": limit,
            "asked": action.value,
        }
        if note:
            data["note"] = note
        self.record(live, done, data)
        if done == EnforcementAction.KILL:
            await self.engine.kill(sid, reason=reason)

    async def _throttle(self, live: LiveSandbox, what: str) -> str:
        """'' when throttled; otherwise why not."""
        if what == "output-limit":
            live.meter.stopped = True
            return ""
        if what != "cpu-time":
            return f"{what} cannot be throttled"
        if not live.runtime.resizable:
            return f"{live.runtime.name} cannot change a running sandbox's CPU quota"
        res = live.sandbox.resources
        lower = res.model_copy(update={"cpu": max(MIN_CPU, res.cpu * THROTTLE_FACTOR)})
        try:
            await live.runtime.resize(sid := live.sandbox.id, lower, live.directory / "bundle")
        except TartarusError as exc:
            return f"throttle failed: {exc}"
        live.sandbox = self.engine.sandboxes.update(live.sandbox, resources=lower)
        log.info("throttled", sandbox=sid, cpu=lower.cpu)
        return ""

    def record(self, live: LiveSandbox, action: EnforcementAction, data: dict[str, Any]) -> None:
        """A sandbox event and an audit record, in one transaction."""
        kind = f"enforcement.{action.value}"
        sid = live.sandbox.id
        try:
            with self.engine.db.begin() as conn:
                add_event(conn, sid, kind, data)
                audit.append(
                    conn, kind, data, actor="erinyes", tenant=live.sandbox.tenant, sandbox_id=sid
                )
        except Exception as exc:  # the action happens anyway
            log.error("could not record an enforcement action", sandbox=sid, error=repr(exc))


def usage(live: LiveSandbox, limits: Enforcement) -> list[tuple[str, int, int]]:
    """(budget name, used, limit) for each budget `limits` sets."""
    sid = live.sandbox.id
    out: list[tuple[str, int, int]] = []
    if limits.cpu_seconds is not None:
        out.append(("cpu-time", cpu_ns(sid), int(limits.cpu_seconds * 1e9)))
    if limits.memory_mb is not None:
        out.append(("memory", memory_bytes(sid), limits.memory_mb * MIB))
    if limits.disk_mb is not None:
        out.append(("disk", layer_bytes(live.directory / "layer"), limits.disk_mb * MIB))
    if limits.output_bytes is not None:
        out.append(("output-limit", live.meter.total, limits.output_bytes))
    if limits.network_bytes is not None:
        rx_tx = network_bytes(sid)
        if rx_tx is not None:
            out.append(("network", rx_tx, limits.network_bytes))
    return out


def _cgroup_file(sandbox_id: str, *names: str) -> int:
    for path in cgroups.leftovers(CGROUP_PARENT, sandbox_id):
        for name in names:
            with contextlib.suppress(OSError, ValueError, KeyError):
                text = (path / name).read_text()
                if name == "cpu.stat":  # cgroup v2: usage_usec
                    fields = dict(line.split() for line in text.splitlines())
                    return int(fields["usage_usec"]) * 1000
                return int(text)
    return 0


def cpu_ns(sandbox_id: str) -> int:
    """CPU time of every process in the sandbox's cgroup (cpuacct, or v2's cpu.stat)."""
    return _cgroup_file(sandbox_id, "cpuacct.usage", "cpu.stat")


def memory_bytes(sandbox_id: str) -> int:
    return _cgroup_file(sandbox_id, "memory.usage_in_bytes", "memory.current")


def layer_bytes(layer: Path) -> int:
    """Bytes used in the writable layer's tmpfs (mounted in the engine's namespace)."""
    try:
        st = os.statvfs(layer)
    except OSError:
        return 0
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def network_bytes(sandbox_id: str) -> int | None:
    """Received plus sent, where Styx gave the sandbox a network (node/network.py)."""
    from tartarus.node import network

    counters = getattr(network, "counters", None)
    if counters is None:
        return None
    rx_tx: tuple[int, int] | None = counters(sandbox_id)
    return None if rx_tx is None else rx_tx[0] + rx_tx[1]
