"""A real `tartarus server` on loopback for API and SDK tests.

The server runs as a subprocess (the real command): the engine enters a private mount
namespace per thread and spawns runtimes from its loop's thread, which a server thread inside
the test process would share badly with other tests. Tests talk to it over HTTP only.

Fixture `api_server` (session): `.url`, `.admin_key`, `.state_dir`; `.stop()` / `.start()` restart
it on the same state dir. At the end it is stopped with SIGTERM (sandboxes survive that, by
design) and a one-shot engine reaps whatever sandboxes the tests left running.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tartarus.runtimes import reaper
from tartarus.runtimes.bundle import QEMU_UID
from tests.conftest import RUNTIMES, TARTARUS, working

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

_REAP = """
import asyncio
from tartarus.config import Settings
from tartarus.node.engine import Engine

async def main():
    engine = Engine(Settings())  # adopt=False: every orphaned sandbox is reaped at open()
    await engine.open()
    await engine.close()

asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ApiServer:
    state_dir: Path
    port: int = field(default_factory=_free_port)
    admin_key: str = ""
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)  # on top of os.environ

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "server.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    TARTARUS,
                    "server",
                    "--port",
                    str(self.port),
                    "--state-dir",
                    str(self.state_dir),
                    "--log-level",
                    "warning",
                ],
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"tartarus server exited early:\n{self.log()}")
            try:
                if httpx2.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tartarus server did not come up:\n{self.log()}")
            time.sleep(0.1)
        self.admin_key = (self.state_dir / "admin.key").read_text().strip()

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def reap(self) -> None:
        """End every sandbox left on this state dir (the server leaves them running)."""
        env = {**os.environ, "TARTARUS_STATE_DIR": str(self.state_dir)}
        subprocess.run([sys.executable, "-c", _REAP], env=env, check=False, timeout=120)
        reap_orphans()


def _sandbox_uid(pid: Path) -> bool:
    for line in (pid / "status").read_text().splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
            return 100000 <= uid < 165536 or uid == QEMU_UID  # a container's, a VM's QEMU
    return False


def reap_orphans() -> None:
    """Collect sandbox inits a stopped server left to us (we are their subreaper), so no
    zombie outlives the test; only sandbox uids, never another test's subprocesses."""
    deadline = time.monotonic() + 5
    while True:
        left = 0
        for stat_file in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat_file.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == os.getpid() and _sandbox_uid(stat_file.parent):
                    pid, _ = os.waitpid(int(stat_file.parent.name), os.WNOHANG)
                    left += pid == 0
            except (OSError, ValueError, IndexError, ChildProcessError):
                continue
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def new_state_dir() -> Path:
    # short: sandbox sockets live under it and AF_UNIX paths are limited to 108 bytes
    path = Path(tempfile.mkdtemp(prefix="tt-", dir="/tmp"))
    path.chmod(0o711)
    return path


# The shared server keeps the default grace for disconnected execs (30 s): clients kill a
# command explicitly (DELETE .../exec/{id}). test_exec_resume.py runs its own server with a
# short grace to test the expiry.
SHARED_SERVER_ENV: dict[str, str] = {}


@pytest.fixture(scope="module")
def api_server() -> Iterator[ApiServer]:
    yield from run_server(SHARED_SERVER_ENV)


def run_server(env: dict[str, str]) -> Iterator[ApiServer]:
    # a server's sandbox inits outlive it (by design); as their subreaper we can reap them
    reaper.become_subreaper()
    server = ApiServer(new_state_dir(), env=env)
    try:
        server.start()
        yield server
    finally:
        code = server.stop()
        server.reap()
        shutil.rmtree(server.state_dir, ignore_errors=True)
        assert code == 0, f"server exited with {code}:\n{server.log()}"


# -- helpers for the tests ----------------------------------------------------------------------


def client(server: ApiServer, key: str | None) -> httpx2.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx2.Client(base_url=server.url, headers=headers, timeout=60.0)


_tenant_counter = iter(range(1_000_000))


def new_tenant(server: ApiServer, role: str = "member") -> tuple[str, str]:
    """A fresh tenant and a key for it: (tenant, key)."""
    name = f"t{os.getpid()}-{next(_tenant_counter)}"
    with client(server, server.admin_key) as admin:
        assert admin.post("/v1/tenants", json={"name": name}).status_code == 201
        r = admin.post("/v1/keys", json={"tenant": name, "role": role, "name": "test"})
        assert r.status_code == 201, r.text
        return name, str(r.json()["key"])


@dataclass
class SSEEvent:
    event: str
    id: str | None
    data: dict[str, Any]

    @property
    def bytes(self) -> bytes:
        return base64.b64decode(self.data["data"])


def sse_events(response: httpx2.Response) -> Iterator[SSEEvent]:
    """Parse a text/event-stream response as it arrives."""
    event, ident, data = "message", None, list[str]()
    for line in response.iter_lines():
        if line == "":
            if data:
                yield SSEEvent(event, ident, json.loads("\n".join(data)))
            event, ident, data = "message", None, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                ident = value
            elif name == "data":
                data.append(value)


def output(events: list[SSEEvent], stream: str) -> bytes:
    return b"".join(e.bytes for e in events if e.event == stream)


def assert_error(response: httpx2.Response, status: int, type_: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == type_
    message = body["error"]["message"]
    assert isinstance(message, str) and message
    return message


@pytest.fixture(scope="module")
def tenant_a(api_server: ApiServer) -> tuple[str, str]:
    return new_tenant(api_server)


@pytest.fixture(scope="module")
def tenant_b(api_server: ApiServer) -> tuple[str, str]:
    return new_tenant(api_server)


@pytest.fixture
def http_a(api_server: ApiServer, tenant_a: tuple[str, str]) -> Iterator[httpx2.Client]:
    with client(api_server, tenant_a[1]) as c:
        yield c


@pytest.fixture
def http_b(api_server: ApiServer, tenant_b: tuple[str, str]) -> Iterator[httpx2.Client]:
    with client(api_server, tenant_b[1]) as c:
        yield c


@pytest.fixture(scope="module", params=RUNTIMES)
def api_runtime(request: pytest.FixtureRequest) -> str:
    """Each runtime in turn, for the tests of a module that are about sandbox behaviour."""
    return working(request.param)


@pytest.fixture(scope="module")
def sandbox_a(
    api_server: ApiServer, tenant_a: tuple[str, str], api_runtime: str
) -> Iterator[dict[str, Any]]:
    """A running idle sandbox of tenant A on each runtime in turn, shared by a module's tests."""
    with client(api_server, tenant_a[1]) as c:
        body = {"template": "python", "timeout": 300, "runtime": api_runtime}
        r = c.post("/v1/sandboxes", json=body)
        assert r.status_code == 201, r.text
        sandbox: dict[str, Any] = r.json()
        try:
            yield sandbox
        finally:
            c.delete(f"/v1/sandboxes/{sandbox['id']}")
