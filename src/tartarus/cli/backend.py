"""Where sandbox commands run: a server (`TARTARUS_URL` set, through the SDK) or the embedded
engine on this machine. Both answer with the API's plain sandbox JSON, normalised through the
SDK's model, so every command prints the same thing in both modes.

The embedded engine closes with `kill=False`: a sandbox created by one CLI call outlives it,
and the next call's engine (`adopt=True`) supervises it again.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import click

if TYPE_CHECKING:
    from tartarus.models import SandboxSpec
    from tartarus.node.engine import Engine
    from tartarus.sdk._client import AsyncClient

T = TypeVar("T")
OutputWriter = Callable[[str, bytes], None]  # (stream name, bytes)

LIVE_STATES = ("pending", "starting", "running", "paused", "hibernated")


class CLIError(click.ClickException):
    """One `error: ...` line, exit 1."""


class BadInputError(CLIError):
    """Not found or bad input: exit 2, like usage errors."""

    exit_code = 2


@dataclass(frozen=True)
class ExecOutcome:
    exit_code: int
    signal: int | None = None
    timed_out: bool = False

    @property
    def shell_code(self) -> int:
        """What a shell would report: 124 for a timeout (like timeout(1)), 128+N for signal N."""
        if self.timed_out:
            return 124
        if self.signal:
            return 128 + self.signal
        return self.exit_code


@dataclass(frozen=True)
class CreateOptions:
    template: str | None  # None: the snapshot's
    runtime: str | None
    cpu: float | None
    memory_mb: int | None
    pids: int | None
    disk_mb: int | None
    timeout: float
    env: dict[str, str]
    workdir: str | None
    metadata: dict[str, str]
    command: tuple[str, ...]
    snapshot: str | None = None
    seccomp: str | None = None
    network: str = "none"
    egress: tuple[str, ...] = ()

    def spec(self, engine: Engine) -> SandboxSpec:
        """The engine's spec for these options, the template's defaults filled in (the
        embedded modes' one translation: `create` and `run` check input alike)."""
        from pydantic import ValidationError

        from tartarus.cli.options import resources, validation_message
        from tartarus.errors import InvalidRequestError
        from tartarus.models import NetworkMode, SandboxSpec

        template = self.template
        if template is None:
            assert self.snapshot is not None
            template = engine.snapshots.get(self.snapshot, any_tenant=True).template
        base = engine.catalog.resolve(template).spec.resources
        limits = resources(
            base, cpu=self.cpu, memory_mb=self.memory_mb, pids=self.pids, disk_mb=self.disk_mb
        )
        try:
            return SandboxSpec(
                template=template,
                snapshot=self.snapshot,
                command=self.command,
                env=self.env,
                workdir=self.workdir,
                resources=limits,
                timeout=self.timeout,
                runtime=self.runtime,
                metadata=self.metadata,
                seccomp=self.seccomp,
                network=NetworkMode(self.network),
                egress=self.egress,
            )
        except ValidationError as exc:
            raise InvalidRequestError(validation_message(exc)) from None


class Backend(Protocol):
    remote: bool

    async def create(self, options: CreateOptions) -> dict[str, Any]: ...
    async def list_sandboxes(
        self, states: list[str] | None, metadata: dict[str, str]
    ) -> list[dict[str, Any]]: ...
    async def get(self, sandbox_id: str) -> dict[str, Any]: ...
    async def kill(self, sandbox_id: str) -> dict[str, Any]: ...
    async def exec(
        self,
        sandbox_id: str,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str | None,
        timeout: float | None,
        stdin: bytes | None,
        output: OutputWriter,
    ) -> ExecOutcome: ...
    def logs(self, sandbox_id: str, follow: bool) -> AsyncIterator[tuple[str, bytes]]: ...
    async def close(self) -> None: ...


def normalise(data: dict[str, Any]) -> dict[str, Any]:
    """The API's sandbox JSON, formatted one way whichever side produced it."""
    from tartarus.sdk.models import SandboxInfo

    info = SandboxInfo.model_validate(data)
    dumped = info.model_dump(mode="json", by_alias=True)
    if info.events is None:
        del dumped["events"]
    return dumped


# -- remote ---------------------------------------------------------------------------------


class RemoteBackend:
    remote = True

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def create(self, options: CreateOptions) -> dict[str, Any]:
        from tartarus.sdk import _api

        call = _api.create_sandbox(
            template=options.template,
            timeout=options.timeout,
            cpu=options.cpu,
            memory_mb=options.memory_mb,
            pids=options.pids,
            disk_mb=options.disk_mb,
            env=options.env,
            metadata=options.metadata,
            runtime=options.runtime,
            command=list(options.command),
            workdir=options.workdir,
            snapshot=options.snapshot,
            seccomp=options.seccomp,
            network=options.network,
            egress=list(options.egress),
        )
        return normalise((await self.client.call(call)).model_dump(by_alias=True))

    async def list_sandboxes(
        self, states: list[str] | None, metadata: dict[str, str]
    ) -> list[dict[str, Any]]:
        from tartarus.sdk import _api

        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            call = _api.list_sandboxes(state=states, metadata=metadata, cursor=cursor)
            page = await self.client.call(call)
            out += [normalise(i.model_dump(by_alias=True)) for i in page.items]
            if not page.next_cursor:
                return out
            cursor = page.next_cursor

    async def get(self, sandbox_id: str) -> dict[str, Any]:
        from tartarus.sdk import _api

        info = await self.client.call(_api.get_sandbox(sandbox_id))
        return normalise(info.model_dump(by_alias=True))

    async def kill(self, sandbox_id: str) -> dict[str, Any]:
        from tartarus.sdk import _api

        info = await self.client.call(_api.kill_sandbox(sandbox_id))
        return normalise(info.model_dump(by_alias=True))

    async def exec(
        self,
        sandbox_id: str,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str | None,
        timeout: float | None,
        stdin: bytes | None,
        output: OutputWriter,
    ) -> ExecOutcome:
        from tartarus.sdk import _api

        request = _api.exec_request(
            sandbox_id, argv, env=env, cwd=cwd, timeout=timeout, stdin=stdin
        )
        collector = _api.ExecCollector(on_output=output)
        async for event in await self.client.stream(request):
            collector.feed(event)
        result = collector.result()
        return ExecOutcome(result.exit_code, result.signal, result.timed_out)

    async def logs(self, sandbox_id: str, follow: bool) -> AsyncIterator[tuple[str, bytes]]:
        from tartarus.sdk import _api

        async for event in await self.client.stream(_api.logs_request(sandbox_id, follow=follow)):
            if event.event == "end":
                return
            item = _api.log_event(event)
            if item is not None:
                yield item.stream, item.data

    async def close(self) -> None:
        await self.client.aclose()


# -- embedded -------------------------------------------------------------------------------


class EmbeddedBackend:
    remote = False

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def create(self, options: CreateOptions) -> dict[str, Any]:
        if options.command:
            # Its supervisor would die with this process: only a server can keep it running.
            raise BadInputError(
                "a sandbox with a main command needs a server (set TARTARUS_URL);"
                " here, use `tartarus run` or `create` then `exec`"
            )
        spec = options.spec(self.engine)
        from tartarus.control import submit

        sandbox = await submit.create(self.engine, spec, tenant=None, actor=submit.CLI_ACTOR)
        return self._json(sandbox)

    async def list_sandboxes(
        self, states: list[str] | None, metadata: dict[str, str]
    ) -> list[dict[str, Any]]:
        from tartarus.models import SandboxState

        wanted = None if states == ["all"] else [SandboxState(s) for s in states or LIVE_STATES]
        found = self.engine.list(states=wanted, metadata=metadata or None)
        return [self._json(s) for s in reversed(found)]  # newest first, as the API

    async def get(self, sandbox_id: str) -> dict[str, Any]:
        sandbox = self.engine.get(sandbox_id)
        return self._json(sandbox, events=self.engine.events(sandbox_id))

    async def kill(self, sandbox_id: str) -> dict[str, Any]:
        return self._json(await self.engine.kill(sandbox_id))

    async def exec(
        self,
        sandbox_id: str,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str | None,
        timeout: float | None,
        stdin: bytes | None,
        output: OutputWriter,
    ) -> ExecOutcome:
        result = await self.engine.exec(
            sandbox_id,
            argv,
            env=env,
            cwd=cwd,
            timeout=timeout,
            stdin=stdin,
            on_stdout=lambda data: output("stdout", data),
            on_stderr=lambda data: output("stderr", data),
        )
        return ExecOutcome(result.exit_code, result.signal, result.timed_out)

    async def logs(self, sandbox_id: str, follow: bool) -> AsyncIterator[tuple[str, bytes]]:
        async for entry in self.engine.logs(sandbox_id, follow=follow):
            yield entry.stream, entry.data

    async def close(self) -> None:
        # Hand our sandboxes off explicitly: the next engine re-adopts only unowned ones, and
        # "owned by a live process" would otherwise hold while this process lives on (tests,
        # or any program calling these commands in-process).
        for sandbox_id in self.engine.running_ids():
            self.engine.sandboxes.set_owner(sandbox_id, None)
        await self.engine.close(kill=False)

    @staticmethod
    def _json(sandbox: Any, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        # the API's own shapes, so embedded and remote output cannot drift apart
        from tartarus.api.schemas import SandboxDetail, SandboxOut

        shown = (
            SandboxOut.of(sandbox) if events is None else SandboxDetail.with_events(sandbox, events)
        )
        return normalise(shown.model_dump(mode="json", by_alias=True))


# -- choosing and running -------------------------------------------------------------------


def is_remote() -> bool:
    return bool(os.environ.get("TARTARUS_URL"))


async def open_backend() -> Backend:
    if is_remote():
        from tartarus.sdk._client import AsyncClient

        return RemoteBackend(AsyncClient())
    from tartarus.node.engine import Engine

    _engine_logs_to_stderr()
    engine = Engine(adopt=True)
    await engine.open()
    return EmbeddedBackend(engine)


def _engine_logs_to_stderr() -> None:
    """Stdout carries the commands' own output (`exec`, `create`'s id): the engine's notes
    ("re-adopted sandbox") go to stderr, warnings and worse only."""
    import logging

    import structlog

    structlog.configure(
        logger_factory=lambda *args: structlog.PrintLogger(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )


async def open_admin(what: str = "keys and tenants") -> AsyncClient:
    """Tenants, keys and pools live in a server: there is nothing to manage embedded."""
    if not is_remote():
        raise BadInputError(
            f"{what} are managed by a server: set TARTARUS_URL"
            " (and TARTARUS_API_KEY to an admin key)"
        )
    from tartarus.sdk._client import AsyncClient

    return AsyncClient()


@contextmanager
def cli_errors() -> Iterator[None]:
    """SDK and engine errors as one `error:` line; not-found and bad input exit 2."""
    from tartarus import errors as engine_errors
    from tartarus.sdk import errors as sdk_errors

    try:
        yield
    except (
        sdk_errors.NotFoundError,
        sdk_errors.InvalidRequestError,
        engine_errors.NotFoundError,
        engine_errors.InvalidRequestError,
    ) as exc:
        raise BadInputError(str(exc)) from None
    except (sdk_errors.TartarusError, engine_errors.TartarusError) as exc:
        raise CLIError(str(exc)) from None


def run(body: Callable[[Backend], Awaitable[T]]) -> T:
    """Open the backend, run `body`, close it (embedded: leave sandboxes running)."""

    async def main() -> T:
        backend = await open_backend()
        try:
            return await body(backend)
        finally:
            await backend.close()

    with cli_errors():
        return asyncio.run(main())
