"""A real `tartarus server` for the benchmark: what users run, on loopback, in a temp state dir.

The server is a subprocess in its own session, so a Ctrl-C at the terminal reaches only the
benchmark, which then cleans up in order: pools deleted and sandboxes killed through the API,
the server stopped with SIGTERM, then a one-shot engine on the state dir reaps whatever a
failure left (a stopped server leaves sandboxes running by design), and the dir is removed.
Sandbox inits a dying server leaves are re-parented to us (we are a subreaper): we reap them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

from tartarus.runtimes import reaper
from tartarus.runtimes.bundle import HOST_UID_BASE, ID_RANGE

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
REAP_TIMEOUT_S = 120.0
TARTARUS = str(Path(sys.executable).parent / "tartarus")
# the server is local and starts with the defaults: no pools (the cold cases must be cold),
# the default runtime (crun, like the floors), the default shutdown policy
DEFAULTED_ENV = (
    "TARTARUS_URL",
    "TARTARUS_API_KEY",
    "TARTARUS_POOLS_FILE",
    "TARTARUS_RUNTIME",
    "TARTARUS_SHUTDOWN",
)

# adopt=False: every sandbox whose owner (the stopped server) is gone is reaped at open()
_REAP = """
import asyncio
from tartarus.config import Settings
from tartarus.node.engine import Engine

async def main():
    engine = Engine(Settings())
    await engine.open()
    await engine.close()

asyncio.run(main())
"""


class ServerError(RuntimeError):
    """The server did not come up (the message carries the end of its log)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class BenchServer:
    def __init__(self) -> None:
        # short: sandbox sockets live under it and AF_UNIX paths are limited to 108 bytes
        self.state_dir = Path(tempfile.mkdtemp(prefix="ttb-", dir="/tmp"))
        self.state_dir.chmod(0o711)
        self.port = _free_port()
        self.admin_key = ""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "server.log"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> None:
        reaper.become_subreaper()
        env = {**os.environ, "TARTARUS_STATE_DIR": str(self.state_dir)}
        for var in DEFAULTED_ENV:
            env.pop(var, None)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [TARTARUS, "server", "--port", str(self.port), "--log-level", "warning"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise ServerError(f"tartarus server exited early:\n{self.log_tail()}")
            try:
                if httpx2.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"tartarus server did not come up:\n{self.log_tail()}")
            time.sleep(0.05)
        self.admin_key = (self.state_dir / "admin.key").read_text().strip()

    def openapi_paths(self) -> set[str]:
        """The API's routes, to tell which optional features (pools, hibernate) exist."""
        doc: dict[str, Any] = httpx2.get(f"{self.url}/openapi.json", timeout=30).json()
        return set(doc.get("paths", {}))

    def stop(self) -> None:
        """SIGTERM, wait, reap what is left, remove the state dir. Safe to call twice."""
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            if self.state_dir.exists():
                env = {**os.environ, "TARTARUS_STATE_DIR": str(self.state_dir)}
                subprocess.run(
                    [sys.executable, "-c", _REAP],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=REAP_TIMEOUT_S,
                    check=False,
                )
        finally:
            _reap_orphans()
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> BenchServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _reap_orphans(timeout: float = 5.0) -> None:
    """Collect sandbox inits re-parented to us, until none is left or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _orphans_left():
            return
        reaper.reap_sandbox_zombies()
        time.sleep(0.1)


def _orphans_left() -> bool:
    me = str(os.getpid())
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError, StopIteration):
            text = status.read_text()
            ppid = next(x for x in text.splitlines() if x.startswith("PPid:")).split()[1]
            uid = int(next(x for x in text.splitlines() if x.startswith("Uid:")).split()[1])
            if ppid == me and HOST_UID_BASE <= uid < HOST_UID_BASE + ID_RANGE:
                return True
    return False
