"""The node engine (Hecatoncheir): one path from a spec to a running, supervised sandbox.

create() resolves the template image, picks the runtime, mounts the private writable layer
(Lethe), sets up the network (Styx) where one is asked for, hands the guest agent a
listening socket and starts the container; a pooled sandbox is handed out instead where one
fits (Nyx). A supervisor task per sandbox then watches it to its end (node/supervisor.py:
every path, failed starts included, ends in `supervisor.finish`). The rest is the facade
the API and CLI use: queries, exec, and the lifecycle actions, each in its own module
(lifecycle, hibernate, snapshots, readopt).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from tartarus.config import Settings
from tartarus.errors import (
    AgentError,
    CapabilityError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    TartarusError,
)
from tartarus.images.cache import ImageCache, resolve_in_root
from tartarus.images.catalog import TemplateCatalog
from tartarus.models import (
    ExecResult,
    NetworkMode,
    Resources,
    Sandbox,
    SandboxSpec,
    SandboxState,
    TemplateSpec,
)
from tartarus.node import (
    guestfiles,
    hibernate,
    idle,
    lifecycle,
    logs,
    owners,
    snapshots,
    supervisor,
)
from tartarus.node.agent_client import AgentClient, OutputCallback
from tartarus.node.enforcement import Erinyes
from tartarus.node.live import USER_GID, USER_UID, LiveSandbox, MainIO
from tartarus.node.logs import LogEntry
from tartarus.node.network import Styx
from tartarus.node.overlay import Overlay
from tartarus.node.pools import Pools, load_pool_file
from tartarus.node.timings import PhaseClock, PhaseListener
from tartarus.runtimes import hostns, reaper
from tartarus.runtimes.base import BindMount, ContainerConfig
from tartarus.runtimes.bundle import host_uid
from tartarus.runtimes.registry import RuntimeRegistry
from tartarus.runtimes.seccomp_profiles import SeccompProfiles
from tartarus.store import Database
from tartarus.store.jobs import JobQueue
from tartarus.store.sandboxes import SandboxRepository
from tartarus.store.snapshots import Snapshot, SnapshotRepository

log = structlog.get_logger("tartarus.engine")

HOME = "/home/user"
GUEST_MOUNT = "/.tartarus"  # an empty directory every image has
AGENT_GRACE_S = 5.0  # the in-guest deadline fires after ours: it is only a backstop
SLOW_START_MS = 1000.0  # a start this long moves the guest's deadline after the engine's
MAX_TIMEOUT_S = 7 * 24 * 3600.0
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": HOME,
    "USER": "user",
    "LANG": "C.UTF-8",
}

ProgressCallback = Callable[[str, float | None], None]


class Engine:
    def __init__(self, settings: Settings | None = None, *, adopt: bool = False) -> None:
        self.settings = settings or Settings()
        self.adopt = adopt  # re-adopt orphaned idle sandboxes at open() (servers do)
        self.db = Database(self.settings.db_path)
        self.sandboxes = SandboxRepository(self.db)
        self.snapshots = SnapshotRepository(self.db)
        self.jobs = JobQueue(self.db)
        self.images = ImageCache(self.settings.image_dir)
        self.catalog = TemplateCatalog(
            self.db,
            self.images,
            mirror=self.settings.mirror,
            snapshots_dir=self.settings.snapshots_dir,
        )
        self.runtimes = RuntimeRegistry(self.settings.state_dir)
        self.seccomp = SeccompProfiles(self.settings.state_dir)  # Typhon's named profiles
        self.owner = owners.current()
        self.pools = Pools(self)
        self.erinyes = Erinyes(self)  # usage budgets while sandboxes run, and the output cap
        self.network = Styx(self.settings)  # allowlist/open sandboxes' netns, rules and DNS
        self.phase_listeners: builtins.list[PhaseListener] = []  # e.g. Prometheus histograms
        # Whether policy lets the engine hibernate a sandbox on its own (idle, shutdown): the
        # control plane installs its check (the node reads no policies); an API request is
        # checked before it reaches the engine.
        self.may_hibernate: Callable[[Sandbox], bool] = lambda _sandbox: True
        self._clocks: dict[str, PhaseClock] = {}  # sandboxes not yet past their first exec
        self._late: dict[str, dict[str, float]] = {}  # phases measured after the start
        self._background: set[asyncio.Task[None]] = set()
        self._live: dict[str, LiveSandbox] = {}
        self._guest_dir: Path | None = None

    # -- setup and teardown -------------------------------------------------------------------

    async def open(self, *, reconcile: bool = True) -> None:
        """Prepare directories and the private mount namespace; reap what dead engines left."""
        for d in (self.settings.state_dir, self.settings.sandboxes_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o711)  # container roots (unprivileged host uids) must traverse to binds
        self.settings.logs_dir.mkdir(mode=0o700, exist_ok=True)
        # always, not only on hybrid hosts: a CLI started from inside another engine's
        # namespace (no cgroup2 left to hide) would otherwise mount in, and share, that one
        hostns.enter()
        reaper.become_subreaper()
        self._guest_dir = guestfiles.install(self.settings.state_dir)
        if reconcile:
            from tartarus.node.reconcile import reconcile as _reconcile

            await _reconcile(self)
        monitor = asyncio.create_task(idle.monitor(self))  # Hypnos: idle ones hibernate
        self._background.add(monitor)
        monitor.add_done_callback(self._background.discard)
        retention = asyncio.create_task(snapshots.retention_loop(self))  # Nyx
        self._background.add(retention)
        retention.add_done_callback(self._background.discard)

    async def start_pools(self) -> None:
        """Keep the configured warm pools filled (servers do; a CLI engine is too short-lived)."""
        path = self.settings.pools_file
        await self.pools.start(load_pool_file(path) if path is not None else [])

    async def close(self, *, kill: bool = True) -> None:
        """Kill what this engine still supervises (an embedded engine ends with its CLI), or
        with `kill=False` leave it running for the next engine to re-adopt."""
        await self.pools.stop(kill=kill)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.erinyes.close()
        if kill:
            await asyncio.gather(
                *(self.kill(sid, reason="engine shut down") for sid in list(self._live)),
                return_exceptions=True,
            )
        else:  # the next engine may hibernate them: their layers must stay reachable
            await hibernate.keep_layers(self)
        for live in list(self._live.values()):
            live.detached = True
            if live.task is not None:
                live.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await live.task
            # released, not orphaned: the next engine (even in this process) may adopt it
            with contextlib.suppress(Exception):
                self.sandboxes.set_owner(live.sandbox.id, None)
        for runtime in self.runtimes.runtimes.values():  # gVisor's agent relays end with us
            if (close := getattr(runtime, "close", None)) is not None:
                await close()
        self.network.close()  # their resolvers: the next engine serves them again
        self.db.close()

    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lifecycle ----------------------------------------------------------------------------

    async def create(
        self,
        spec: SandboxSpec,
        *,
        tenant: str | None = None,
        io: MainIO | None = None,
        progress: ProgressCallback | None = None,
        pool: str | None = None,
        received: float | None = None,
    ) -> Sandbox:
        """Start a sandbox for `spec`, or hand out a ready one from the template's warm pool
        when it fits. `pool` is for the pools themselves: the new sandbox waits in that pool.
        `received` is when the request arrived (perf_counter), for the `admit` phase."""
        clock = PhaseClock(received)
        if received is not None:
            clock.mark("admit")
        template = self.catalog.resolve(spec.template)
        self.network.validate(spec.network, spec.egress)  # before anything is made
        seccomp = self.seccomp.resolve(spec.seccomp)  # an unknown name fails before anything
        snap: Snapshot | None = None
        if spec.snapshot is not None:  # its files over the image it was taken on
            snap = snapshots.resolve_for_create(self, spec, tenant)
            spec = spec.model_copy(update={"snapshot": snap.id})
            image = self.images.info(snap.image)
        else:
            image = self.catalog.ensure_built(spec.template, progress=progress)
        clock.mark("image")
        # a snapshot keeps its runtime unless the required isolation rules it out
        default_runtime = snap.runtime if snap is not None else self.settings.default_runtime
        runtime = await self.runtimes.select(spec.runtime, spec.isolation, default=default_runtime)
        if spec.network.value not in runtime.capabilities.network_modes:  # before Styx's work
            raise CapabilityError(runtime.name, f"network {spec.network.value}")
        resources = spec.resources or template.spec.resources
        env, workdir = environment(spec, template.spec)
        pooled = None
        if pool is None and snap is None:  # a pooled sandbox lacks the snapshot's files
            pooled = self.pools.take(
                spec,
                image=image.hash,
                runtime=runtime.name,
                resources=resources,
                workdir=template.spec.workdir,
            )
        clock.mark("schedule")
        if pooled is not None and await self._fit(pooled, resources):
            return await self._hand_out(pooled, spec, tenant, env, io, clock)
        sandbox = Sandbox(
            id=f"sb-{secrets.token_hex(6)}",
            tenant=tenant,
            spec=spec,
            runtime=runtime.name,
            image=image.hash,
            resources=resources,
            created_at=datetime.now(UTC),
            pool=pool,
        )
        # The submit path writes the record and its create job; on one machine this engine
        # claims the job and moves to STARTING in the same transaction. In fleet mode a node
        # agent claims queued jobs instead (store/jobs.py).
        job_id = self.sandboxes.insert(sandbox, owner=self.owner, job="create", start=True)
        assert job_id is not None
        clock.mark("queue")
        sandbox = sandbox.model_copy(update={"state": SandboxState.STARTING})
        directory = self.settings.sandboxes_dir / sandbox.id
        live = LiveSandbox(sandbox, runtime, directory, directory / "a.sock", env, workdir)
        live.has_agent = image.python is not None
        self._live[sandbox.id] = live
        try:
            await self._start_container(
                live,
                self.images.rootfs(image.hash),
                image.python,
                resources,
                clock,
                preimport=template.spec.preimport,
                extra_lowers=snapshots.lowers_for(self, snap, runtime) if snap else (),
                seccomp=seccomp,
            )
            clock.phases["create"] = clock.since_start()
            now = datetime.now(UTC)
            live.sandbox = self.sandboxes.update(
                live.sandbox,
                job_done=(job_id, self.owner),
                state=SandboxState.RUNNING,
                started_at=now,
                expires_at=now + timedelta(seconds=spec.timeout),
                timings_ms=clock.phases,
            )
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, TartarusError) else f"start failed: {exc!r}"
            await asyncio.shield(supervisor.finish(self, live, SandboxState.FAILED, reason=reason))
            self.jobs.finish(job_id, self.owner, error=reason)
            raise
        hibernate.attach(self, live)  # now: a use may come before the supervisor runs
        live.task = asyncio.create_task(supervisor.supervise(self, live, io or MainIO()))
        self._started(live, clock)
        if clock.since_start() > SLOW_START_MS:  # the guest's backstop was set before a long
            with contextlib.suppress(OSError, TartarusError):  # start: it would come early
                await lifecycle.arm_backstop(live, AGENT_GRACE_S)
        if snap is not None and snap.memory:  # Nyx: the snapshot's processes, not fresh ones
            try:
                await snapshots.restore_memory(self, live, snap)
            except BaseException:
                await asyncio.shield(self.kill(sandbox.id, reason="memory restore failed"))
                raise
        return live.sandbox

    async def _fit(self, live: LiveSandbox, resources: Resources) -> bool:
        """Lower a pooled sandbox's limits to what the request asked for; on failure it is
        discarded and the request starts cold instead."""
        if resources == live.sandbox.resources:
            return True
        try:
            await live.runtime.resize(live.sandbox.id, resources, live.directory / "bundle")
            if resources.disk_mb != live.sandbox.resources.disk_mb:
                Overlay(live.directory).resize(resources.disk_mb)
            live.sandbox = self.sandboxes.update(live.sandbox, resources=resources)
        except (TartarusError, OSError) as exc:
            sid = live.sandbox.id
            log.warning("could not resize a pooled sandbox", sandbox=sid, error=str(exc))
            await self.kill(live.sandbox.id, reason=f"resize for hand-out failed: {exc}")
            return False
        return True

    async def _hand_out(
        self,
        live: LiveSandbox,
        spec: SandboxSpec,
        tenant: str | None,
        env: dict[str, str],
        io: MainIO | None,
        clock: PhaseClock,
    ) -> Sandbox:
        """Give a pooled sandbox to a request: its owner, environment, deadline and main
        command are the request's from now on. If that fails, the sandbox is killed and the
        request fails (never half handed out)."""
        try:
            if live.has_agent and env != live.env:  # run_code contexts start from it
                await live.client.set_env(env)
            live.env = env
            now = datetime.now(UTC)
            expires = now + timedelta(seconds=spec.timeout)
            if live.has_agent:  # only a backstop: not worth a round trip before answering
                deadline = expires.timestamp() + AGENT_GRACE_S
                self._spawn(live, lambda: live.client.set_deadline(deadline))
            clock.mark("pool")
            live.sandbox = self.sandboxes.update(
                live.sandbox,
                spec=spec,
                tenant=tenant,
                pool=None,
                started_at=now,
                expires_at=expires,
                timings_ms={**clock.phases, "create": clock.since_start()},
            )
            live.deadline_moved.set()
            if spec.command:  # the pool's idle supervisor makes way for one with the command
                assert live.task is not None
                live.detached = True
                live.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await live.task
                live.detached = False
                live.task = asyncio.create_task(supervisor.supervise(self, live, io or MainIO()))
        except BaseException:
            await asyncio.shield(self.kill(live.sandbox.id, reason="hand-out from pool failed"))
            raise
        self._started(live, clock, guest=False)  # its guest answered long ago, in the pool
        return live.sandbox

    def _started(self, live: LiveSandbox, clock: PhaseClock, *, guest: bool = True) -> None:
        self.erinyes.watch(live)
        for phase, ms in clock.phases.items():
            self._observe(phase, ms)
        self._late.pop(live.sandbox.id, None)  # a pooled one's were the pool's
        self._clocks[live.sandbox.id] = clock  # until its first exec
        if guest and live.has_agent:
            self._spawn(live, lambda: self._guest_ready(live, clock))

    def _spawn(self, live: LiveSandbox, work: Callable[[], Coroutine[Any, Any, object]]) -> None:
        """Run `work` for `live` in the background (cancelled at close); its failure is
        only logged, and not even that once the sandbox has ended."""

        async def guarded() -> None:
            try:
                await work()  # made here: a task cancelled before it ran leaves no coroutine
            except (AgentError, OSError) as exc:
                if not live.done.is_set() and not live.killed.is_set():
                    log.warning("background work failed", sandbox=live.sandbox.id, error=str(exc))

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _guest_ready(self, live: LiveSandbox, clock: PhaseClock) -> None:
        await live.quiet_client.ping()  # never wakes a hibernated one
        clock.mark("guest_ready")
        self._record_phase(live, "guest_ready", clock.phases["guest_ready"])

    def _record_phase(
        self, live: LiveSandbox, phase: str, ms: float, *, persist: bool = False
    ) -> None:
        """Add a phase measured after the sandbox started. It is shown at once (`get`) and
        written with the next write that carries timings (`persist`: now); never fails the
        caller."""
        self._observe(phase, ms)
        if live.done.is_set():
            return
        self._late.setdefault(live.sandbox.id, {})[phase] = ms
        if not persist:
            return
        try:
            live.sandbox = self.sandboxes.update(live.sandbox, timings_ms=self._timings(live))
        except TartarusError as exc:
            log.warning("could not record a phase", sandbox=live.sandbox.id, error=str(exc))

    def _timings(self, live: LiveSandbox) -> dict[str, float]:
        return {**live.sandbox.timings_ms, **self._late.get(live.sandbox.id, {})}

    def _observe(self, phase: str, ms: float) -> None:
        for listener in self.phase_listeners:
            listener(phase, ms)

    async def _start_container(
        self,
        live: LiveSandbox,
        lower: Path,
        python: str | None,
        resources: Resources,
        clock: PhaseClock,
        *,
        preimport: tuple[str, ...] = (),
        extra_lowers: Sequence[Path] = (),
        seccomp: dict[str, Any] | None = None,
    ) -> None:
        assert self._guest_dir is not None, "Engine.open() was not called"
        live.directory.mkdir(mode=0o711)
        overlay = Overlay(live.directory)
        uid, gid = host_uid(USER_UID), host_uid(USER_GID)
        owned = {HOME: (uid, gid, 0o755), "/tmp": (host_uid(0), host_uid(0), 0o1777)}
        if live.workdir not in owned:
            existing = resolve_in_root(lower, live.workdir)
            if existing is not None and not existing.is_dir():
                raise InvalidRequestError(f"workdir {live.workdir} is not a directory")
            if existing is None:  # created for the user; an existing directory stays as is
                owned[live.workdir] = (uid, gid, 0o755)
        overlay.mount(lower, resources.disk_mb, owned, extra_lowers=extra_lowers)
        clock.mark("overlay")
        spec = live.sandbox.spec
        if spec.network != NetworkMode.NONE:  # Styx; `none` keeps the runtime's own netns
            await self.network.attach(live.sandbox.id, live.directory, spec.network, spec.egress)
            clock.mark("network")
        netns, net_binds, guest_net = self.network.container_parts(live.directory)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(live.socket_path))
            listener.listen(64)
            deadline = time.time() + live.sandbox.spec.timeout + AGENT_GRACE_S
            config = ContainerConfig(
                id=live.sandbox.id,
                rootfs=overlay.rootfs,
                args=_init_args(python, deadline, preimport),
                env=live.env,
                cwd=HOME,
                resources=resources,
                uid=USER_UID,
                gid=USER_GID,
                binds=[BindMount(self._guest_dir, GUEST_MOUNT), *net_binds],
                pass_fds=[listener.fileno()],
                netns=netns,
                network=guest_net,
                seccomp=seccomp,
            )
            live.init_pid = await live.runtime.start(
                config, live.directory / "bundle", live.directory / "init.log"
            )
        finally:
            listener.close()  # the container holds its own copy
        clock.mark("runtime")

    # -- queries --------------------------------------------------------------------------------

    def get(self, sandbox_id: str, *, tenant: str | None = None) -> Sandbox:
        """The record; another tenant's sandbox is as unknown as a missing one."""
        live = self._live.get(sandbox_id)
        if live is None:
            sandbox = self.sandboxes.get(sandbox_id)
        elif sandbox_id in self._late:
            sandbox = live.sandbox.model_copy(update={"timings_ms": self._timings(live)})
        else:
            sandbox = live.sandbox
        if tenant is not None and sandbox.tenant != tenant:
            raise NotFoundError(f"no sandbox {sandbox_id!r}")
        return sandbox

    def list(
        self,
        *,
        tenant: str | None = None,
        states: builtins.list[SandboxState] | None = None,
        metadata: dict[str, str] | None = None,
        limit: int | None = None,
        before: str | None = None,
    ) -> builtins.list[Sandbox]:
        return self.sandboxes.list(
            states, tenant=tenant, metadata=metadata, limit=limit, before=before
        )

    def events(self, sandbox_id: str) -> builtins.list[dict[str, Any]]:
        return self.sandboxes.events(sandbox_id)

    # -- operations on running sandboxes ------------------------------------------------------

    def _get_live(
        self, sandbox_id: str, tenant: str | None = None, *, paused_ok: bool = False
    ) -> LiveSandbox:
        sandbox = self.get(sandbox_id, tenant=tenant)  # NotFoundError first
        live = self._live.get(sandbox_id)
        if live is None:
            raise ConflictError(f"sandbox {sandbox_id} is {sandbox.state.value}, not running")
        if live.sandbox.state == SandboxState.PAUSED and not paused_ok:
            raise ConflictError(f"sandbox {sandbox_id} is paused; resume it first")
        return live

    def agent(self, sandbox_id: str, *, tenant: str | None = None) -> AgentClient:
        """The guest agent of a running sandbox, for files and code."""
        return self._get_live(sandbox_id, tenant).client

    async def wait(self, sandbox_id: str) -> Sandbox:
        live = self._live.get(sandbox_id)
        if live is None:
            return self.sandboxes.get(sandbox_id)
        await live.done.wait()
        return live.sandbox  # the final record, even if the store failed meanwhile

    async def run(
        self,
        spec: SandboxSpec,
        *,
        io: MainIO | None = None,
        progress: ProgressCallback | None = None,
    ) -> Sandbox:
        """Create a sandbox for `spec.command`, stream its output, and wait until it has ended."""
        if not spec.command:
            raise InvalidRequestError("run needs a command")
        sandbox = await self.create(spec, io=io, progress=progress)
        try:
            return await self.wait(sandbox.id)
        except BaseException:
            await self.kill(sandbox.id, reason="interrupted")
            raise

    async def exec(
        self,
        sandbox_id: str,
        argv: builtins.list[str],
        *,
        tenant: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ExecResult:
        if not argv:
            raise InvalidRequestError("exec needs a command")
        live = self._get_live(sandbox_id, tenant)
        result = await live.exec(
            argv,
            env={**live.env, **(env or {})},
            cwd=cwd or live.workdir,
            timeout=timeout,
            stdin=stdin,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )
        clock = self._clocks.pop(sandbox_id, None)
        if clock is not None:  # written after the caller has its result
            ms = clock.since_start()
            asyncio.get_running_loop().call_soon(
                functools.partial(self._record_phase, live, "first_exec", ms, persist=True)
            )
        return result

    async def set_timeout(
        self, sandbox_id: str, seconds: float, *, tenant: str | None = None
    ) -> Sandbox:
        """Move the wall-clock deadline to `seconds` from now (longer or shorter)."""
        if not 0 < seconds <= MAX_TIMEOUT_S:
            raise InvalidRequestError(f"timeout must be in (0, {MAX_TIMEOUT_S:g}] seconds")
        live = self._get_live(sandbox_id, tenant)
        expires = datetime.now(UTC) + timedelta(seconds=seconds)
        if live.has_agent:
            await live.client.set_deadline(expires.timestamp() + AGENT_GRACE_S)
        live.sandbox = self.sandboxes.update(live.sandbox, expires_at=expires)
        live.deadline_moved.set()
        return live.sandbox

    async def kill(
        self, sandbox_id: str, *, tenant: str | None = None, reason: str = "killed by user"
    ) -> Sandbox:
        sandbox = self.get(sandbox_id, tenant=tenant)
        live = self._live.get(sandbox_id)
        if live is None:
            if sandbox.terminal:
                return sandbox
            raise ConflictError(f"sandbox {sandbox_id} is supervised by another engine")
        if live.kill_reason is None:
            live.kill_reason = reason
        while live.container_away and live.lifecycle_lock.locked() and not live.done.is_set():
            await asyncio.sleep(0.02)  # a hibernation or a wake is halfway: let it end first
        live.killed.set()
        await live.done.wait()
        return live.sandbox

    async def pause(self, sandbox_id: str, *, tenant: str | None = None) -> Sandbox:
        """Freeze every process of the sandbox, memory kept; its timeout stops counting."""
        live = self._get_live(sandbox_id, tenant, paused_ok=True)
        return await lifecycle.pause(self, live, AGENT_GRACE_S)

    async def resume(self, sandbox_id: str, *, tenant: str | None = None) -> Sandbox:
        """Thaw a paused sandbox; its deadline moves by the time it spent paused."""
        live = self._get_live(sandbox_id, tenant, paused_ok=True)
        return await lifecycle.resume(self, live, AGENT_GRACE_S)

    async def hibernate(self, sandbox_id: str, *, tenant: str | None = None) -> Sandbox:
        """Save the sandbox's memory and writable layer to disk and release its container,
        cgroups and mounts; its timeout stops counting (node/hibernate.py)."""
        live = self._get_live(sandbox_id, tenant, paused_ok=True)
        return await hibernate.hibernate(self, live)

    async def wake(self, sandbox_id: str, *, tenant: str | None = None) -> Sandbox:
        """Restore a hibernated sandbox; any use of one does this by itself."""
        live = self._get_live(sandbox_id, tenant, paused_ok=True)
        return await hibernate.wake(self, live)

    async def terminate(
        self,
        sandbox_id: str,
        *,
        tenant: str | None = None,
        grace: float | None = None,
        checkpoint: bool = False,
    ) -> Sandbox:
        """SIGTERM every process but the guest agent, give them `grace` seconds (default:
        the template's, else the configured one), then kill; the final record says how it
        ended (node/lifecycle.py). An ended sandbox is returned as it is. `checkpoint`
        snapshots it first (409 if it cannot be; a VM's is a memory snapshot, its files being
        on its own disk), and the final reason names the snapshot."""
        sandbox = self.get(sandbox_id, tenant=tenant)
        seconds = lifecycle.grace_for(self, sandbox, grace)
        if sandbox.terminal:
            if checkpoint:
                raise ConflictError(
                    f"sandbox {sandbox_id} is {sandbox.state.value}: nothing left to checkpoint"
                )
            return sandbox
        live = self._get_live(sandbox_id, tenant, paused_ok=True)
        memory = not live.runtime.files_on_host
        saved = await snapshots.take(self, live, None, memory=memory) if checkpoint else None
        return await lifecycle.terminate(
            self, live, seconds, AGENT_GRACE_S, saved_as=saved.id if saved else None
        )

    async def snapshot(
        self,
        sandbox_id: str,
        *,
        name: str | None = None,
        tenant: str | None = None,
        memory: bool = False,
    ) -> Snapshot:
        """Save the sandbox's files (its writable layer, copied while it is paused), and with
        `memory` its processes, as a snapshot that new sandboxes start from
        (node/snapshots.py)."""
        live = self._get_live(sandbox_id, tenant, paused_ok=True)
        return await snapshots.take(self, live, name, memory=memory)

    def logs(
        self,
        sandbox_id: str,
        *,
        tenant: str | None = None,
        follow: bool = False,
        after: int = 0,
    ) -> AsyncIterator[LogEntry]:
        """The main command's output; with `follow`, until the sandbox has ended."""
        self.get(sandbox_id, tenant=tenant)  # NotFoundError before any streaming starts
        live = self._live.get(sandbox_id)

        def ended() -> bool:
            return live is None or live.done.is_set()

        return logs.read(
            self.settings.logs_dir / f"{sandbox_id}.jsonl",
            after=after,
            follow=follow,
            ended=ended,
            live=live.output if live is not None else None,
        )

    def running_ids(self) -> builtins.list[str]:
        return list(self._live)


def environment(spec: SandboxSpec, template: TemplateSpec) -> tuple[dict[str, str], str]:
    """The environment and working directory commands get: base, template, then request."""
    return {**BASE_ENV, **template.env, **spec.env}, spec.workdir or template.workdir


def _init_args(python: str | None, deadline: float, preimport: tuple[str, ...] = ()) -> list[str]:
    """The sandbox's init: the guest agent, or for images without python3 a shell loop of the
    host's static busybox that just keeps the sandbox alive for runtime exec. The agent's
    zygote pre-imports the template's `preimport` modules (guest/zygote.py)."""
    if python is not None:
        agent = f"{GUEST_MOUNT}/start.py"  # a stub: the agent proper loads precompiled
        args = [python, "-I", "-S", agent, "--fd", "3", "--deadline", f"{deadline:.3f}"]
        return [*args, "--preimport", ",".join(preimport)]
    busybox = f"{GUEST_MOUNT}/busybox"
    loop = f"trap 'exit 0' TERM; while :; do {busybox} sleep 3600 & wait $!; done"
    return [busybox, "sh", "-c", loop]
