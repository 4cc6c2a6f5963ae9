"""`tartarus server`: the API (Olympus) and the node engine in one process and one event loop.

The engine must live in the loop's thread (it enters a private mount namespace per thread
and spawns runtimes from there), so uvicorn is driven programmatically inside our own loop
rather than by `uvicorn.run`. On SIGTERM uvicorn drains, then the shutdown policy applies
(`--shutdown`, `TARTARUS_SHUTDOWN`, node/shutdown.py): `leave` (the default) closes the engine
*without* killing sandboxes, so the next server on the same state dir re-adopts them (paused
ones stay paused); `terminate` ends each one gracefully first (SIGTERM, its grace period,
kill); `hibernate` hibernates those whose runtime can checkpoint, for the next server to wake
on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import click
import uvicorn

from tartarus.config import SHUTDOWN_POLICIES, Settings
from tartarus.store.auth import AuthStore, load_pepper

ADMIN_TENANT = "admin"
GRACEFUL_SHUTDOWN_S = 5
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State directory (default: $TARTARUS_STATE_DIR or /var/lib/tartarus).",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@click.option(
    "--shutdown",
    type=click.Choice(SHUTDOWN_POLICIES),
    default=None,
    help="On SIGTERM: leave sandboxes running for the next server, terminate them"
    " gracefully, or hibernate those that can be (the next server wakes them on use; the"
    " rest are left, or terminated where the next server could not re-adopt them)"
    " (default: $TARTARUS_SHUTDOWN or leave).",
)
def server(
    host: str, port: int, state_dir: Path | None, log_level: str, shutdown: str | None
) -> None:
    """Serve the HTTP API (docs/api.md) with the engine on this machine (run as root).

    By default sandboxes outlive the server: stop it with SIGTERM and the next start
    re-adopts them. With `--shutdown terminate` they are terminated gracefully instead;
    with `--shutdown hibernate` they sleep on disk until the next server's first use.
    """
    if state_dir is not None:
        os.environ["TARTARUS_STATE_DIR"] = str(state_dir.absolute())
    settings = Settings()
    if shutdown is not None:
        settings = dataclasses.replace(settings, shutdown=shutdown)
    asyncio.run(_serve(settings, host, port, log_level))


def bootstrap_admin(auth: AuthStore, state_dir: Path) -> Path | None:
    """On first start: tenant `admin` and an admin key in STATE_DIR/admin.key (0600)."""
    if auth.get_tenant(ADMIN_TENANT) is not None:
        return None
    auth.create_tenant(ADMIN_TENANT)
    _, secret = auth.create_key(ADMIN_TENANT, "admin", "bootstrap")
    path = state_dir / "admin.key"
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    tmp.replace(path)
    return path


class _Server(uvicorn.Server):
    """uvicorn re-raises the signal it caught once it has drained, which would kill the
    process before the engine is closed; we take the signal and return instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handlers = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


async def _serve(settings: Settings, host: str, port: int, log_level: str) -> None:
    from tartarus.api import create_app
    from tartarus.node import shutdown
    from tartarus.node.engine import Engine

    engine = Engine(settings, adopt=True)
    await engine.open()
    try:
        await engine.start_pools()
        auth = AuthStore(engine.db, load_pepper(settings.state_dir))
        key_file = bootstrap_admin(auth, settings.state_dir)
        if key_file is not None:
            click.echo(f"tartarus: admin key written to {key_file}")
        app = create_app(engine, settings, auth)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        try:
            await _Server(config).serve()
        finally:
            await app.state.ctx.execs.close()  # running execs end with the server
    finally:
        for sid, outcome in (await shutdown.apply(engine, settings.shutdown)).items():
            if outcome not in ("terminated", "hibernated", "left"):
                click.echo(f"tartarus: shutting {sid} down: {outcome}", err=True)
        await engine.close(kill=False)
