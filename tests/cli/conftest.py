"""CLI tests in both modes: embedded (a private short state dir, this machine's runtimes) and
remote (the real `tartarus server` fixture of the API tests, a fresh tenant)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.api.conftest import ApiServer, api_server, reap_orphans  # noqa: F401
from tests.sdk.conftest import make_tenant


def _reap(state_dir: Path) -> None:
    """End what the embedded commands left running (they leave sandboxes up by design)."""
    from tartarus.config import Settings
    from tartarus.node.engine import Engine

    async def main() -> None:
        engine = Engine(Settings(state_dir=state_dir))  # adopt=False: reaps unowned sandboxes
        await engine.open()
        await engine.close()

    asyncio.run(main())


@pytest.fixture(scope="module")
def embedded_state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tt-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        _reap(path)
        # runtime probes on a fresh state dir leave their sandbox inits to this process (the
        # engine made it a subreaper): collect them, as the API tests do
        reap_orphans()
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def embedded(embedded_state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("TARTARUS_URL", raising=False)
    monkeypatch.delenv("TARTARUS_API_KEY", raising=False)
    monkeypatch.setenv("TARTARUS_STATE_DIR", str(embedded_state_dir))
    return "embedded"


@pytest.fixture
def remote(api_server: ApiServer, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811
    _, key = make_tenant(api_server)
    monkeypatch.setenv("TARTARUS_URL", api_server.url)
    monkeypatch.setenv("TARTARUS_API_KEY", key)
    return "remote"


@pytest.fixture(params=["embedded", "remote"])
def mode(request: pytest.FixtureRequest) -> str:
    name: str = request.getfixturevalue(request.param)
    return name


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()
