"""The node engine (Hecatoncheir): one path from a spec to a running, supervised sandbox.

create() resolves the template image, picks the runtime, mounts the private writable layer
(Lethe), hands the guest agent a listening socket and starts the container. A supervisor
task per sandbox then runs the main command (if any), enforces the wall-clock timeout
(Erinyes) and decides how the sandbox ended: exit code, OOM kill (read from the memory
cgroup before it is deleted), timeout or kill. Every path, failures included, ends in
`_finish`, which releases the container, the mounts, the cgroups and the socket before the
final state is written, so a record that says "ended" never hides a live resource.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from tartarus.config import Settings
from tartarus.errors import (
    AgentError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    TartarusError,
)
from tartarus.images.cache import ImageCache, resolve_in_root
from tartarus.images.catalog import TemplateCatalog
from tartarus.models import (
    ExecResult,
    Resources,
    Sandbox,
    SandboxSpec,
    SandboxState,
    TemplateSpec,
)
from tartarus.node import guestfiles, logs, owners
from tartarus.node.agent_client import AgentClient, OutputCallback
from tartarus.node.live import USER_GID, USER_UID, LiveSandbox, MainIO
from tartarus.node.logs import LogEntry, OutputLog
from tartarus.node.overlay import Overlay
from tartarus.runtimes import cgroups, hostns, reaper
from tartarus.runtimes.base import BindMount, ContainerConfig, ContainerStatus
from tartarus.runtimes.bundle import CGROUP_PARENT, host_uid
from tartarus.runtimes.registry import RuntimeRegistry
from tartarus.store import Database
from tartarus.store.jobs import JobQueue
from tartarus.store.sandboxes import SandboxRepository

log = structlog.get_logger("tartarus.engine")

HOME = "/home/user"
GUEST_MOUNT = "/.tartarus"  # an empty directory every image has
AGENT_GRACE_S = 5.0  # the in-guest deadline fires after ours: it is only a backstop
WATCH_INTERVAL_S = 1.0
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
        self.jobs = JobQueue(self.db)
        self.images = ImageCache(self.settings.image_dir)
        self.catalog = TemplateCatalog(self.db, self.images, mirror=self.settings.mirror)
        self.runtimes = RuntimeRegistry(self.settings.state_dir)
        self.owner = owners.current()
        self._live: dict[str, LiveSandbox] = {}
        self._guest_dir: Path | None = None

    # -- setup and teardown -------------------------------------------------------------------

    async def open(self, *, reconcile: bool = True) -> None:
        """Prepare directories and the private mount namespace; reap what dead engines left."""
        for d in (self.settings.state_dir, self.settings.sandboxes_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o711)  # container roots (unprivileged host uids) must traverse to binds
        self.settings.logs_dir.mkdir(mode=0o700, exist_ok=True)
        if hostns.is_hybrid_cgroup_host():
            hostns.enter()
        reaper.become_subreaper()
        self._guest_dir = guestfiles.install(self.settings.state_dir)
        if reconcile:
            from tartarus.node.reconcile import reconcile as _reconcile

            await _reconcile(self)

    async def close(self, *, kill: bool = True) -> None:
        """Kill what this engine still supervises (an embedded engine ends with its CLI), or
        with `kill=False` leave it running for the next engine to re-adopt."""
        if kill:
            await asyncio.gather(
                *(self.kill(sid, reason="engine shut down") for sid in list(self._live)),
                return_exceptions=True,
            )
        for live in list(self._live.values()):
            live.detached = True
            if live.task is not None:
                live.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await live.task
            # released, not orphaned: the next engine (even in this process) may adopt it
            with contextlib.suppress(Exception):
                self.sandboxes.set_owner(live.sandbox.id, None)
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
    ) -> Sandbox:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        template = self.catalog.resolve(spec.template)
        image = self.catalog.ensure_built(spec.template, progress=progress)
        timings["image"] = _ms(t0)
        runtime = await self.runtimes.select(spec.runtime or self.settings.default_runtime)
        resources = spec.resources or template.spec.resources
        env, workdir = _environment(spec, template.spec)
        sandbox = Sandbox(
            id=f"sb-{secrets.token_hex(6)}",
            tenant=tenant,
            spec=spec,
            runtime=runtime.name,
            image=image.hash,
            resources=resources,
            created_at=datetime.now(UTC),
        )
        # the submit path: record and job in one transaction; on one machine we claim our
        # own job at once, in fleet mode a node agent claims it (store/jobs.py)
        job_id = self.sandboxes.insert(sandbox, owner=self.owner, job="create")
        assert job_id is not None
        claimed = self.jobs.claim(self.owner, job_id=job_id)
        timings["queue"] = _ms(t0)
        directory = self.settings.sandboxes_dir / sandbox.id
        live = LiveSandbox(sandbox, runtime, directory, directory / "a.sock", env, workdir)
        live.has_agent = image.python is not None
        self._live[sandbox.id] = live
        try:
            if not claimed:
                raise ConflictError(f"the create job of {sandbox.id} was claimed by another node")
            sandbox = self.sandboxes.update(sandbox, state=SandboxState.STARTING)
            live.sandbox = sandbox
            await self._start_container(
                live, self.images.rootfs(image.hash), image.python, resources, timings, t0
            )
            timings["create"] = _ms(t0)
            now = datetime.now(UTC)
            live.sandbox = self.sandboxes.update(
                live.sandbox,
                state=SandboxState.RUNNING,
                started_at=now,
                expires_at=now + timedelta(seconds=spec.timeout),
                timings_ms=timings,
            )
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, TartarusError) else f"start failed: {exc!r}"
            await asyncio.shield(self._finish(live, SandboxState.FAILED, reason=reason))
            if claimed:
                self.jobs.finish(job_id, self.owner, error=reason)
            raise
        self.jobs.finish(job_id, self.owner)
        live.task = asyncio.create_task(self._supervise(live, io or MainIO()))
        return live.sandbox

    async def _start_container(
        self,
        live: LiveSandbox,
        lower: Path,
        python: str | None,
        resources: Resources,
        timings: dict[str, float],
        t0: float,
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
        overlay.mount(lower, resources.disk_mb, owned)
        timings["overlay"] = _ms(t0)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(live.socket_path))
            listener.listen(64)
            deadline = time.time() + live.sandbox.spec.timeout + AGENT_GRACE_S
            config = ContainerConfig(
                id=live.sandbox.id,
                rootfs=overlay.rootfs,
                args=_init_args(python, deadline),
                env=live.env,
                cwd=HOME,
                resources=resources,
                uid=USER_UID,
                gid=USER_GID,
                binds=[BindMount(self._guest_dir, GUEST_MOUNT)],
                pass_fds=[listener.fileno()],
            )
            live.init_pid = await live.runtime.start(
                config, live.directory / "bundle", live.directory / "init.log"
            )
        finally:
            listener.close()  # the container holds its own copy
        timings["runtime"] = _ms(t0)

    async def _supervise(self, live: LiveSandbox, io: MainIO, *, resume: bool = False) -> None:
        spec = live.sandbox.spec
        waiters: set[asyncio.Future[Any]] = set()
        main: asyncio.Task[ExecResult] | None = None
        killed = asyncio.ensure_future(live.killed.wait())
        waiters.add(killed)
        if spec.command:
            live.output = OutputLog(self.settings.logs_dir / f"{live.sandbox.id}.jsonl")
            main = asyncio.create_task(
                live.run_main(
                    list(spec.command),
                    env=live.env,
                    cwd=live.workdir,
                    stdin=io.stdin,
                    on_stdout=io.on_stdout,
                    on_stderr=io.on_stderr,
                    resume=resume,
                )
            )
            waiters.add(main)
        watch = asyncio.create_task(self._watch_container(live))
        waiters.add(watch)
        try:
            while True:
                moved = asyncio.ensure_future(live.deadline_moved.wait())
                expires = live.sandbox.expires_at or datetime.now(UTC)
                remaining = (expires - datetime.now(UTC)).total_seconds()
                done, _ = await asyncio.wait(
                    waiters | {moved},
                    timeout=max(remaining, 0),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                moved.cancel()
                if done == {moved}:
                    live.deadline_moved.clear()
                    continue
                done.discard(moved)
                break
            state, exit_code, reason = await self._outcome(live, done, main, killed)
        except BaseException as exc:
            state, exit_code, reason = SandboxState.FAILED, None, f"supervisor error: {exc!r}"
            raise
        finally:
            for w in waiters:
                w.cancel()
            if not live.detached:
                await self._finish(live, state, exit_code=exit_code, reason=reason)

    async def _outcome(
        self,
        live: LiveSandbox,
        done: set[asyncio.Future[Any]],
        main: asyncio.Task[ExecResult] | None,
        killed: asyncio.Future[Any],
    ) -> tuple[SandboxState, int | None, str | None]:
        sid = live.sandbox.id
        if killed in done:
            return SandboxState.KILLED, None, live.kill_reason
        if not done:
            return SandboxState.TIMED_OUT, None, "wall-clock timeout reached"
        if cgroups.oom_kills(CGROUP_PARENT, sid) > 0:
            return SandboxState.OOM_KILLED, 137, "memory"
        if main is not None and main in done:
            try:
                result = main.result()
            except AgentError as exc:
                return SandboxState.FAILED, None, f"guest agent failed: {exc}"
            if result.error:
                return SandboxState.FAILED, result.exit_code, result.error
            return SandboxState.EXITED, result.exit_code, None
        return SandboxState.FAILED, None, "sandbox init exited unexpectedly"

    async def _watch_container(self, live: LiveSandbox) -> None:
        """Return when the container stops on its own (its agent died or was killed)."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            status = await live.runtime.status(live.sandbox.id)
            if status in (None, ContainerStatus.STOPPED):
                return

    async def _finish(
        self,
        live: LiveSandbox,
        state: SandboxState,
        *,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Release everything, then record the final state. Safe to call on partial starts,
        and it always marks the sandbox done, whatever fails on the way."""
        sid = live.sandbox.id
        errors: list[str] = []
        try:
            try:
                await live.runtime.delete(sid)
            except Exception as exc:
                errors.append(f"delete: {exc}")
            if live.init_pid is not None and not await reaper.reap(live.init_pid):
                errors.append(f"init process {live.init_pid} did not exit")
            try:
                Overlay(live.directory).remove()
            except OSError as exc:
                errors.append(f"overlay: {exc}")
            if survivors := await cgroups.drain(CGROUP_PARENT, sid):
                errors.append(f"processes survived the kill: {sorted(survivors)}")
            cgroups.remove(CGROUP_PARENT, sid)
            try:
                live.sandbox = self.sandboxes.update(
                    live.sandbox,
                    state=state,
                    exit_code=exit_code,
                    reason=reason,
                    finished_at=datetime.now(UTC),
                )
                self.sandboxes.set_owner(sid, None)
            except Exception as exc:  # the store may be gone; the sandbox is released anyway
                errors.append(f"record: {exc}")
                live.sandbox = live.sandbox.model_copy(
                    update={"state": state, "exit_code": exit_code, "reason": reason}
                )
        finally:
            if errors:
                log.error("cleanup incomplete", sandbox=sid, errors=errors)
            self._live.pop(sid, None)
            live.done.set()

    async def readopt(self, sandbox: Sandbox) -> bool:
        """Supervise again a running sandbox whose engine died; False if it cannot be.

        A main command is re-attached when it runs detached in the guest; one that was an
        ordinary exec (stdin fed by the dead engine) died with its connection.
        """
        runtime = self.runtimes.runtimes.get(sandbox.runtime)
        if sandbox.state != SandboxState.RUNNING or runtime is None:
            return False
        if await runtime.status(sandbox.id) != ContainerStatus.RUNNING:
            return False
        try:
            template = self.catalog.resolve(sandbox.spec.template)
        except TartarusError:
            return False
        env, workdir = _environment(sandbox.spec, template.spec)
        if sandbox.expires_at is None:
            started = sandbox.started_at or sandbox.created_at
            sandbox = sandbox.model_copy(
                update={"expires_at": started + timedelta(seconds=sandbox.spec.timeout)}
            )
        directory = self.settings.sandboxes_dir / sandbox.id
        live = LiveSandbox(sandbox, runtime, directory, directory / "a.sock", env, workdir)
        with contextlib.suppress(OSError, ValueError):
            live.init_pid = int((directory / "bundle" / "init.pid").read_text())
        try:
            await asyncio.wait_for(live.client.ping(), timeout=2.0)
            if sandbox.spec.command:
                status = await asyncio.wait_for(live.client.main_status(), timeout=2.0)
                if not status.get("started"):
                    return False
        except (AgentError, TimeoutError):
            return False
        self._live[sandbox.id] = live
        resume = bool(sandbox.spec.command)
        live.task = asyncio.create_task(self._supervise(live, MainIO(), resume=resume))
        log.info("re-adopted sandbox", sandbox=sandbox.id)
        return True

    # -- queries --------------------------------------------------------------------------------

    def get(self, sandbox_id: str, *, tenant: str | None = None) -> Sandbox:
        """The record; another tenant's sandbox is as unknown as a missing one."""
        live = self._live.get(sandbox_id)
        sandbox = live.sandbox if live is not None else self.sandboxes.get(sandbox_id)
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

    def _get_live(self, sandbox_id: str, tenant: str | None = None) -> LiveSandbox:
        sandbox = self.get(sandbox_id, tenant=tenant)  # NotFoundError first
        live = self._live.get(sandbox_id)
        if live is None:
            raise ConflictError(f"sandbox {sandbox_id} is {sandbox.state.value}, not running")
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
        return await live.exec(
            argv,
            env={**live.env, **(env or {})},
            cwd=cwd or live.workdir,
            timeout=timeout,
            stdin=stdin,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )

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
        live.killed.set()
        await live.done.wait()
        return live.sandbox

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


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


def _environment(spec: SandboxSpec, template: TemplateSpec) -> tuple[dict[str, str], str]:
    """The environment and working directory commands get: base, template, then request."""
    return {**BASE_ENV, **template.env, **spec.env}, spec.workdir or template.workdir


def _init_args(python: str | None, deadline: float) -> list[str]:
    """The sandbox's init: the guest agent, or for images without python3 a shell loop of the
    host's static busybox that just keeps the sandbox alive for runtime exec."""
    if python is not None:
        agent = f"{GUEST_MOUNT}/agent.py"
        return [python, "-I", "-S", agent, "--fd", "3", "--deadline", f"{deadline:.3f}"]
    busybox = f"{GUEST_MOUNT}/busybox"
    loop = f"trap 'exit 0' TERM; while :; do {busybox} sleep 3600 & wait $!; done"
    return [busybox, "sh", "-c", loop]
