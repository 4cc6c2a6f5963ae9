"""`tartarus run`: start a sandbox for one command, stream its output, pass on its exit code."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from typing import BinaryIO

import click
from pydantic import ValidationError

from tartarus.cli.options import parse_env, resources, sandbox_options, validation_message
from tartarus.cli.progress import BuildProgress
from tartarus.errors import InvalidRequestError
from tartarus.models import Sandbox, SandboxSpec, SandboxState
from tartarus.node.agent_client import OutputCallback
from tartarus.node.engine import Engine
from tartarus.node.live import MainIO

EXIT_TIMEOUT = 124  # like timeout(1)
EXIT_INTERRUPTED = 130
EXIT_KILLED = 137
EXIT_FAILED = 1


@click.command()
@sandbox_options
@click.option("--stdin", "pass_stdin", is_flag=True, help="Pass this command's stdin through.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    template: str,
    runtime: str | None,
    cpu: float | None,
    memory: int | None,
    pids: int | None,
    disk: int | None,
    timeout: float,
    env: tuple[str, ...],
    workdir: str | None,
    pass_stdin: bool,
    command: tuple[str, ...],
) -> int:
    """Run COMMAND in a new sandbox and exit with its exit code.

    \b
    Example:  tartarus run --template python -- python3 -c 'print(6*7)'
    Exit codes: the command's own; 124 timed out; 137 killed (OOM or otherwise);
    130 interrupted; 1 the sandbox failed; 2 bad input.
    """
    env_map = parse_env(env)
    return asyncio.run(
        _run(
            template,
            runtime,
            cpu,
            memory,
            pids,
            disk,
            timeout,
            env_map,
            workdir,
            pass_stdin,
            command,
        )
    )


async def _run(
    template: str,
    runtime: str | None,
    cpu: float | None,
    memory: int | None,
    pids: int | None,
    disk: int | None,
    timeout: float,
    env: dict[str, str],
    workdir: str | None,
    pass_stdin: bool,
    command: tuple[str, ...],
) -> int:
    engine = Engine()
    await engine.open()
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main is not None:
        loop.add_signal_handler(signal.SIGTERM, _on_sigterm, main)
    try:
        base = engine.catalog.resolve(template).spec.resources
        limits = resources(base, cpu=cpu, memory_mb=memory, pids=pids, disk_mb=disk)
        try:
            spec = SandboxSpec(
                template=template,
                command=command,
                env=env,
                workdir=workdir,
                resources=limits,
                timeout=timeout,
                runtime=runtime,
            )
        except ValidationError as exc:
            raise InvalidRequestError(validation_message(exc)) from None
        io = MainIO(
            on_stdout=_writer(sys.stdout.buffer),
            on_stderr=_writer(sys.stderr.buffer),
            stdin=_stdin_chunks() if pass_stdin else None,
        )
        with BuildProgress() as progress:
            sandbox = await engine.run(spec, io=io, progress=progress.update)
        return exit_code(sandbox)
    except asyncio.CancelledError:
        return EXIT_INTERRUPTED
    finally:
        await engine.close()


def _on_sigterm(main: asyncio.Task[int]) -> None:
    """First SIGTERM: clean up and exit 130. A second one: exit now; the next engine reaps."""
    if main.cancelling():
        click.echo("tartarus: terminated before cleanup finished", err=True)
        os._exit(EXIT_INTERRUPTED)
    main.cancel()


def exit_code(sandbox: Sandbox) -> int:
    if sandbox.state == SandboxState.EXITED and sandbox.exit_code is not None:
        return sandbox.exit_code
    message = {
        SandboxState.TIMED_OUT: (EXIT_TIMEOUT, "timed out"),
        SandboxState.OOM_KILLED: (EXIT_KILLED, "killed: out of memory"),
        SandboxState.KILLED: (EXIT_KILLED, "killed"),
    }.get(sandbox.state, (EXIT_FAILED, "failed"))
    code, what = message
    detail = (
        f" ({sandbox.reason})"
        if sandbox.reason and sandbox.state != SandboxState.OOM_KILLED
        else ""
    )
    click.echo(f"tartarus: sandbox {sandbox.id} {what}{detail}", err=True)
    return code


def _writer(stream: BinaryIO) -> OutputCallback:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


async def _stdin_chunks() -> AsyncIterator[bytes]:
    """Read our stdin in a daemon thread, so a never-closed terminal cannot block exit."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def pump() -> None:
        while True:
            try:
                chunk = os.read(0, 65536)
            except OSError:
                chunk = b""
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
            if not chunk:
                return

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    while chunk := await queue.get():
        yield chunk
