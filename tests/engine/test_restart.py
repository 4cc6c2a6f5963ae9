"""An engine that dies leaves nothing running: the next one reaps what it owned."""

from __future__ import annotations

import signal
import subprocess
import time

from tartarus.models import SandboxState
from tartarus.node.engine import Engine
from tests.conftest import TARTARUS


def _cli_with_running_sandbox(runtime: str) -> subprocess.Popen[bytes]:
    cli = subprocess.Popen(
        [TARTARUS, "run", "--runtime", runtime, "--", "sh", "-c", "echo up; sleep 120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert cli.stdout is not None
    assert cli.stdout.readline() == b"up\n"
    return cli


async def test_killed_cli_sandbox_is_reaped_by_the_next_engine(runtime: str) -> None:
    cli = _cli_with_running_sandbox(runtime)
    engine = Engine()
    await engine.open(reconcile=False)
    try:
        running = engine.sandboxes.list([SandboxState.RUNNING])
        assert running, "the CLI's sandbox should be recorded as running"
        sid = running[-1].id
        cli.send_signal(signal.SIGKILL)  # no chance to clean up
        cli.communicate()
        runtime_obj = engine.runtimes.get(runtime)
        assert await runtime_obj.status(sid) is not None, "the container outlives its CLI"

        from tartarus.node.reconcile import reconcile

        reaped = await reconcile(engine)
        assert sid in reaped
        record = engine.sandboxes.get(sid)
        assert record.state == SandboxState.FAILED
        assert record.reason and "engine exited" in record.reason
        assert await runtime_obj.status(sid) is None
        assert not (engine.settings.sandboxes_dir / sid).exists()
    finally:
        await engine.close()


async def test_live_owner_is_left_alone(runtime: str) -> None:
    cli = _cli_with_running_sandbox(runtime)
    try:
        engine = Engine()
        await engine.open()  # reconciles: the CLI still lives, so its sandbox stays
        try:
            running = engine.sandboxes.list([SandboxState.RUNNING])
            assert running
            assert await engine.runtimes.get(runtime).status(running[-1].id) is not None
        finally:
            await engine.close()
    finally:
        cli.send_signal(signal.SIGTERM)
        start = time.monotonic()
        _, err = cli.communicate(timeout=60)
        assert time.monotonic() - start < 30
        assert cli.returncode == 130, err
