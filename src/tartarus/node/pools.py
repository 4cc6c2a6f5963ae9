"""Warm pools (Nyx): sandboxes started ahead of demand, handed out once, never reused.

A pooled sandbox is an ordinary sandbox, created by the engine's one create path with the
template's defaults and no owner, marked `pool=<template>` until a create request claims it.
Claiming is synchronous (no await between the check and the pop), so two requests can never
get the same sandbox. What a request may change at hand-out is what the guest agent applies
per command anyway (environment, metadata, timeout, a main command), and limits lowered
with the runtime's `update` (crun, runc); a request that needs anything fixed at start (more
resources, another runtime, workdir or network) starts cold instead.

A pooled sandbox's default `run_code` interpreter is started while it waits (forking one
from the guest's zygote costs ~10 ms), unless the request brings its own environment:
interpreters start from the environment, so that one is then started afresh.

Refill runs in the background with bounded concurrency, so a pool that is emptied by a burst
does not turn into a second burst competing with the requests themselves. A miss raises the
pool's target by one (up to `max`); a quiet minute lowers it towards `min`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import yaml
from pydantic import ValidationError

from tartarus.errors import InvalidRequestError, NotFoundError, TartarusError
from tartarus.models import NetworkMode, Resources, SandboxSpec
from tartarus.models.pool import PoolSpec, PoolStatus
from tartarus.store.pools import PoolRepository

if TYPE_CHECKING:
    from tartarus.node.engine import Engine
    from tartarus.node.live import LiveSandbox

log = structlog.get_logger("tartarus.pools")

POOL_TIMEOUT_S = 7 * 24 * 3600.0  # a pooled sandbox waits this long at most; hand-out resets it
SHRINK_AFTER_S = 60.0  # a pool grown by misses falls back one step per quiet minute
RETRY_MIN_S, RETRY_MAX_S = 1.0, 60.0  # back-off after failed refills
REFILL_DELAY_S = 0.05


@dataclass
class Pool:
    spec: PoolSpec
    runtime: str | None = None  # resolved at the first refill
    ready: deque[LiveSandbox] = field(default_factory=deque)
    starting: int = 0
    handed_out: set[str] = field(default_factory=set)
    hits: int = 0
    misses: int = 0
    target: int = 0
    last_miss: float = 0.0
    last_error: str | None = None
    retry_at: float = 0.0
    backoff: float = RETRY_MIN_S


class Pools:
    def __init__(self, engine: Engine, *, concurrency: int = 2) -> None:
        self.engine = engine
        self.repo = PoolRepository(engine.db)
        self.concurrency = concurrency
        self._pools: dict[str, Pool] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._creates: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(concurrency)

    # -- settings -----------------------------------------------------------------------------

    async def start(self, extra: list[PoolSpec] | None = None) -> None:
        """Load the stored pools (plus `extra`, e.g. from a config file, which are stored),
        take back pooled sandboxes a previous server left running, and start refilling."""
        for spec in extra or []:
            self.repo.put(spec)
        for spec in self.repo.list():
            self._pools[spec.template] = Pool(spec, target=spec.min)
        for live in list(self.engine._live.values()):
            pool = self._pools.get(live.sandbox.pool or "")
            if pool is not None and live.sandbox.pool is not None:
                pool.ready.append(live)
                pool.runtime = live.sandbox.runtime
            elif live.sandbox.pool is not None:
                self._discard(live, "its pool was removed")
        self._task = asyncio.create_task(self._refill_loop())

    async def stop(self, *, kill: bool) -> None:
        """Stop refilling; with `kill`, kill the ready sandboxes (else the next server takes
        them back)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._creates):
            task.cancel()
        await asyncio.gather(*self._creates, return_exceptions=True)
        if kill:
            for pool in self._pools.values():
                while pool.ready:
                    self._discard(pool.ready.popleft(), "pool stopped")

    def set(self, spec: PoolSpec) -> PoolStatus:
        self.engine.catalog.resolve(spec.template)  # NotFoundError for an unknown template
        if spec.runtime is not None and spec.runtime not in self.engine.runtimes.runtimes:
            raise InvalidRequestError(f"unknown runtime {spec.runtime!r}")
        self.repo.put(spec)
        pool = self._pools.get(spec.template)
        if pool is None or pool.spec.runtime != spec.runtime:
            if pool is not None:
                self._drain(pool, "pool runtime changed")
            pool = self._pools[spec.template] = Pool(spec)
        pool.spec = spec
        pool.target = max(spec.min, min(pool.target, spec.ceiling))
        pool.retry_at, pool.backoff, pool.last_error = 0.0, RETRY_MIN_S, None
        self._trim(pool)
        self._wake.set()
        return self._status(pool)

    def remove(self, template: str) -> None:
        self.repo.delete(template)  # NotFoundError first
        pool = self._pools.pop(template, None)
        if pool is not None:
            self._drain(pool, "pool removed")

    def status(self) -> list[PoolStatus]:
        known = {spec.template: spec for spec in self.repo.list()}
        out = []
        for template, spec in known.items():
            pool = self._pools.get(template) or Pool(spec, target=spec.min)
            out.append(self._status(pool))
        return out

    def get(self, template: str) -> PoolStatus:
        for status in self.status():
            if status.template == template:
                return status
        raise NotFoundError(f"no pool for template {template!r}")

    # -- hand-out -----------------------------------------------------------------------------

    def take(
        self, spec: SandboxSpec, *, image: str, runtime: str, resources: Resources, workdir: str
    ) -> LiveSandbox | None:
        """A ready pooled sandbox that fits `spec`, removed from its pool; None for a cold
        start. `image`, `runtime`, `resources` and `workdir` are what `spec` resolves to."""
        pool = self._pools.get(spec.template)
        if pool is None:
            return None
        fixed_at_start = spec.network != NetworkMode.NONE or spec.workdir not in (None, workdir)
        fixed_at_start |= spec.seccomp not in (None, "default")  # pooled ones have the default
        for live in [] if fixed_at_start else list(pool.ready):
            sandbox = live.sandbox
            if live.done.is_set() or live.killed.is_set():
                pool.ready.remove(live)
            elif sandbox.image != image:  # the template was rebuilt since
                pool.ready.remove(live)
                self._discard(live, "template image changed")
            elif (
                sandbox.runtime == runtime
                # both fixed at start: a quarantined or strict request never gets a default one
                and sandbox.spec.seccomp == spec.seccomp
                and sandbox.spec.quarantine == spec.quarantine
                and _fits(resources, sandbox.resources, live)
            ):
                pool.ready.remove(live)
                pool.hits += 1
                pool.handed_out.add(sandbox.id)
                self._wake_soon()
                return live
        pool.misses += 1
        pool.last_miss = time.monotonic()
        pool.target = min(pool.spec.ceiling, pool.target + 1)
        self._wake_soon()
        return None

    def _wake_soon(self) -> None:
        """Refill after a short delay: a request that just got (or missed) a sandbox sends
        its first command right away, and a refill starting now would compete with it."""
        asyncio.get_running_loop().call_later(REFILL_DELAY_S, self._wake.set)

    # -- refill -------------------------------------------------------------------------------

    async def _refill_loop(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            for pool in list(self._pools.values()):
                self._prune(pool, now)
                if now < pool.retry_at:
                    continue
                missing = pool.target - len(pool.ready) - pool.starting
                for _ in range(max(missing, 0)):
                    pool.starting += 1
                    task = asyncio.create_task(self._create_one(pool))
                    self._creates.add(task)
                    task.add_done_callback(self._creates.discard)
            with contextlib.suppress(TimeoutError):  # not wait_for: 3.11's can lose a cancel
                async with asyncio.timeout(RETRY_MIN_S):
                    await self._wake.wait()

    async def _create_one(self, pool: Pool) -> None:
        """Start one pooled sandbox; it counts as `starting` until it is ready (or failed),
        so the refill loop never starts one too many meanwhile."""
        try:
            async with self._slots:
                if self._pools.get(pool.spec.template) is not pool:
                    return  # removed or replaced while we waited
                spec = SandboxSpec(
                    template=pool.spec.template, runtime=pool.spec.runtime, timeout=POOL_TIMEOUT_S
                )
                sandbox = await self.engine.create(spec, pool=pool.spec.template)
                live = self.engine._live.get(sandbox.id)
                if live is not None and live.has_agent:  # its run_code interpreter, ahead
                    with contextlib.suppress(TartarusError):
                        await live.client.run_code("pass")
            if live is None or live.done.is_set():
                return  # it ended already
            pool.runtime = sandbox.runtime
            pool.backoff, pool.last_error = RETRY_MIN_S, None
            if self._pools.get(pool.spec.template) is pool:
                pool.ready.append(live)
                self._trim(pool)
            else:
                self._discard(live, "pool removed")
        except TartarusError as exc:
            self._failed(pool, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("pool refill failed", template=pool.spec.template)
            self._failed(pool, repr(exc))
        finally:
            pool.starting -= 1
            self._wake.set()

    def _failed(self, pool: Pool, error: str) -> None:
        log.warning("pool refill failed", template=pool.spec.template, error=error)
        pool.last_error = error
        pool.retry_at = time.monotonic() + pool.backoff
        pool.backoff = min(pool.backoff * 2, RETRY_MAX_S)

    def _prune(self, pool: Pool, now: float) -> None:
        pool.ready = deque(live for live in pool.ready if not live.done.is_set())
        pool.handed_out = {sid for sid in pool.handed_out if sid in self.engine._live}
        if pool.target > pool.spec.min and now - pool.last_miss > SHRINK_AFTER_S:
            pool.target -= 1
            pool.last_miss = now
            self._trim(pool)

    def _trim(self, pool: Pool) -> None:
        while len(pool.ready) > pool.target:
            self._discard(pool.ready.pop(), "pool shrunk")

    def _drain(self, pool: Pool, reason: str) -> None:
        while pool.ready:
            self._discard(pool.ready.popleft(), reason)

    def _discard(self, live: LiveSandbox, reason: str) -> None:
        live.kill_reason = live.kill_reason or reason
        live.killed.set()  # its supervisor releases it and records the end

    def _status(self, pool: Pool) -> PoolStatus:
        asked = pool.hits + pool.misses
        return PoolStatus(
            template=pool.spec.template,
            runtime=pool.runtime or pool.spec.runtime,
            min=pool.spec.min,
            max=pool.spec.ceiling,
            target=pool.target,
            ready=sum(1 for live in pool.ready if not live.done.is_set()),
            starting=pool.starting,
            in_use=sum(1 for sid in pool.handed_out if sid in self.engine._live),
            hits=pool.hits,
            misses=pool.misses,
            hit_rate=round(pool.hits / asked, 4) if asked else None,
            last_error=pool.last_error,
        )


def _fits(requested: Resources, pooled: Resources, live: LiveSandbox) -> bool:
    """The pooled size, or less where the runtime can lower a running sandbox's limits."""
    if requested == pooled:
        return True
    return live.runtime.resizable and all(
        getattr(requested, name) <= getattr(pooled, name) for name in Resources.model_fields
    )


def load_pool_file(path: Path) -> list[PoolSpec]:
    """Pools from a YAML file: a list of `{template, min, max, runtime}` mappings."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidRequestError(f"cannot read pools file {path}: {exc}") from exc
    if not isinstance(data, list):
        raise InvalidRequestError(f"pools file {path}: expected a list of pools")
    try:
        return [PoolSpec.model_validate(item) for item in data]
    except ValidationError as exc:
        raise InvalidRequestError(f"pools file {path}: {exc}") from exc
