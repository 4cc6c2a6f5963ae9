"""`tartarus run`: start a sandbox for one command, stream its output, pass on its exit code.

Embedded (the default) the engine runs the sandbox with COMMAND as its main command. With
`TARTARUS_URL` set it goes through the server instead: an idle sandbox, COMMAND run in it with
the exec stream (as `tartarus exec` does), and the sandbox deleted whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, BinaryIO

import click
from pydantic import ValidationError

from tartarus.cli.options import (
    network_options,
    parse_env,
    parse_rules,
    resources,
    sandbox_options,
    seccomp_option,
    snapshot_option,
    template_for,
    validation_message,
)
from tartarus.cli.progress import BuildProgress
from tartarus.control import submit
from tartarus.errors import InvalidRequestError
from tartarus.models import (
    TERMINAL_STATES,
    Resources,
    Sandbox,
    SandboxSpec,
    SandboxState,
)
from tartarus.node.agent_client import OutputCallback
from tartarus.node.engine import Engine
from tartarus.node.live import MainIO

if TYPE_CHECKING:
    from tartarus.cli.backend import Backend, CreateOptions

EXIT_TIMEOUT = 124  # like timeout(1)
EXIT_INTERRUPTED = 130
EXIT_KILLED = 137
EXIT_FAILED = 1

# Server mode: the sandbox outlives the command's own timeout by this much, so the exec can
# report `timed_out` itself; the sandbox is deleted right after anyway.
REMOTE_TIMEOUT_MARGIN_S = 15.0
MAX_SANDBOX_TIMEOUT_S = 7 * 24 * 3600.0  # SandboxSpec.timeout's bound
MAX_EXEC_TIMEOUT_S = 24 * 3600.0  # the API's bound on one exec; longer runs rely on the sandbox


@click.command()
@sandbox_options
@snapshot_option
@seccomp_option
@network_options
@click.option("--stdin", "pass_stdin", is_flag=True, help="Pass this command's stdin through.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    template: str,
    snapshot: str | None,
    seccomp: str | None,
    network: str,
    allow: tuple[str, ...],
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
    from tartarus.cli.backend import CreateOptions, is_remote

    parse_rules(allow)
    options = CreateOptions(
        template=template_for(template, snapshot),  # None: the snapshot's
        runtime=runtime,
        cpu=cpu,
        memory_mb=memory,
        pids=pids,
        disk_mb=disk,
        timeout=timeout,
        env=parse_env(env),
        workdir=workdir,
        metadata={},
        command=command,
        snapshot=snapshot,
        seccomp=seccomp,
        network=network,
        egress=allow,
    )
    if is_remote():
        return _run_remote(options, pass_stdin)
    return asyncio.run(_run(options, pass_stdin))


async def _run(options: CreateOptions, pass_stdin: bool) -> int:
    engine = Engine()
    # no reconcile: it would reap the sandboxes `tartarus create` left running for later
    # commands (an adopting engine, as `ps`/`exec` open, takes care of real orphans)
    await engine.open(reconcile=False)
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main is not None:
        loop.add_signal_handler(signal.SIGTERM, _on_sigterm, main)
    try:
        spec = options.spec(engine)
        io = MainIO(
            on_stdout=_writer(sys.stdout.buffer),
            on_stderr=_writer(sys.stderr.buffer),
            stdin=_stdin_chunks() if pass_stdin else None,
        )
        with BuildProgress() as progress:  # admission first, as for every create
            sandbox = await submit.create(
                engine, spec, tenant=None, actor=submit.CLI_ACTOR, io=io, progress=progress.update
            )
        try:
            sandbox = await engine.wait(sandbox.id)
        except BaseException:
            await engine.kill(sandbox.id, reason="interrupted")
            raise
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
    return _report_end(sandbox.id, sandbox.state, sandbox.reason)


def _report_end(sandbox_id: str, state: SandboxState, reason: str | None) -> int:
    """One `tartarus: sandbox ... timed out` line on stderr; the exit code for that end."""
    message = {
        SandboxState.TIMED_OUT: (EXIT_TIMEOUT, "timed out"),
        SandboxState.OOM_KILLED: (EXIT_KILLED, "killed: out of memory"),
        SandboxState.KILLED: (EXIT_KILLED, "killed"),
    }.get(state, (EXIT_FAILED, "failed"))
    code, what = message
    detail = f" ({reason})" if reason and state != SandboxState.OOM_KILLED else ""
    click.echo(f"tartarus: sandbox {sandbox_id} {what}{detail}", err=True)
    return code


# -- server mode ----------------------------------------------------------------------------


def _run_remote(options: CreateOptions, pass_stdin: bool) -> int:
    from tartarus.cli.backend import cli_errors

    # Check the options here, as embedded mode does, so both answer with the same line.
    limits = resources(
        Resources(),
        cpu=options.cpu,
        memory_mb=options.memory_mb,
        pids=options.pids,
        disk_mb=options.disk_mb,
    )
    try:
        SandboxSpec(
            template=options.template or "python",
            command=options.command,
            env=options.env,
            workdir=options.workdir,
            resources=limits,
            timeout=options.timeout,
            runtime=options.runtime,
        )
    except ValidationError as exc:
        raise InvalidRequestError(validation_message(exc)) from None
    timeout = options.timeout
    idle = dataclasses.replace(
        options,
        timeout=min(timeout + REMOTE_TIMEOUT_MARGIN_S, MAX_SANDBOX_TIMEOUT_S),
        command=(),  # idle: COMMAND runs through exec, which streams stdin/out and its timeout
    )
    # the exec API takes stdin whole, as `tartarus exec --stdin` sends it
    stdin = sys.stdin.buffer.read() if pass_stdin else None
    exec_timeout = timeout if timeout <= MAX_EXEC_TIMEOUT_S else None
    with cli_errors():
        return asyncio.run(_remote_main(idle, list(options.command), exec_timeout, stdin))


async def _remote_main(
    options: CreateOptions, argv: list[str], exec_timeout: float | None, stdin: bytes | None
) -> int:
    from tartarus.cli.backend import open_backend

    main = asyncio.current_task()
    if main is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, _on_sigterm, main)
    backend = await open_backend()
    try:
        return await _remote_session(backend, options, argv, exec_timeout, stdin)
    except asyncio.CancelledError:
        return EXIT_INTERRUPTED
    finally:
        await backend.close()


async def _remote_session(
    backend: Backend,
    options: CreateOptions,
    argv: list[str],
    exec_timeout: float | None,
    stdin: bytes | None,
) -> int:
    from tartarus.sdk import errors as sdk_errors

    creating = asyncio.ensure_future(backend.create(options))
    try:
        info = await asyncio.shield(creating)
    except asyncio.CancelledError:
        # interrupted while the server creates it: wait for its id, then delete it
        with contextlib.suppress(Exception):
            await _delete(backend, (await creating)["id"])
        raise
    sandbox_id: str = info["id"]
    streams = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}

    def output(stream: str, data: bytes) -> None:
        streams[stream].write(data)
        streams[stream].flush()

    try:
        try:
            outcome = await backend.exec(
                sandbox_id,
                argv,
                env={},  # the sandbox's own env and workdir apply
                cwd=None,
                timeout=exec_timeout,
                stdin=stdin,
                output=output,
            )
        except sdk_errors.TartarusError:
            # the stream broke: if the sandbox itself ended (its timeout, OOM), say so
            code = await _sandbox_end(backend, sandbox_id)
            if code is None:
                raise
            return code
        if outcome.timed_out:
            return _report_end(sandbox_id, SandboxState.TIMED_OUT, "wall-clock timeout reached")
        if outcome.signal:
            code = await _sandbox_end(backend, sandbox_id)
            if code is not None:
                return code
        return outcome.shell_code
    finally:
        await _delete(backend, sandbox_id)


async def _sandbox_end(backend: Backend, sandbox_id: str) -> int | None:
    """The exit code for a sandbox that ended on its own (with its line), None if it runs."""
    from tartarus.sdk import errors as sdk_errors

    try:
        info = await backend.get(sandbox_id)
    except sdk_errors.TartarusError:
        return None
    state = SandboxState(info["state"])
    if state not in TERMINAL_STATES:
        return None
    if state == SandboxState.EXITED:
        return None  # not killed by the sandbox's end: the command's own result stands
    return _report_end(sandbox_id, state, info.get("reason"))


async def _delete(backend: Backend, sandbox_id: str) -> None:
    """Delete the sandbox; a failure is a warning, not a change of the exit code."""
    try:
        await backend.kill(sandbox_id)
    except Exception as exc:  # best effort: we are ending anyway
        click.echo(f"tartarus: could not delete sandbox {sandbox_id}: {exc}", err=True)


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
