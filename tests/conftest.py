"""Test session setup: one short state dir for the whole run, the shared image cache, and the
runtimes every sandbox test is parametrised over.

Sandbox tests run on every runtime in RUNTIMES (crun, runc, gvisor, and microvm for the
engine and API suites, its core; TARTARUS_TEST_RUNTIMES narrows it for a quick local run).
CI sets TARTARUS_REQUIRE_RUNTIMES=crun,runc,gvisor,microvm: a required runtime that does not
work fails the session instead of skipping. Without it (a
developer's machine), tests of a runtime that does not work here are skipped with the probe's
reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# A short path: sandbox sockets live under it and AF_UNIX paths are limited to 108 bytes.
STATE_DIR = Path(tempfile.mkdtemp(prefix="tt-", dir="/tmp"))
STATE_DIR.chmod(0o711)
os.environ["TARTARUS_STATE_DIR"] = str(STATE_DIR)

ALL_RUNTIMES = ("crun", "runc", "gvisor", "microvm")
# microvm runs the engine, API and network suites here (and its own, tests/microvm; the
# hostile suite names its runtimes itself, microvm among them)
MICROVM_SUITES = ("engine", "api", "network")
_NARROWED = os.environ.get("TARTARUS_TEST_RUNTIMES", "")
RUNTIMES = tuple(r.strip() for r in _NARROWED.split(",") if r.strip()) or ALL_RUNTIMES
REQUIRED = {
    r.strip() for r in os.environ.get("TARTARUS_REQUIRE_RUNTIMES", "").split(",") if r.strip()
}
TARTARUS = str(
    Path(os.environ.get("VIRTUAL_ENV", Path(__file__).parents[1] / ".venv")) / "bin" / "tartarus"
)


def _probe_all() -> dict[str, tuple[bool, str]]:
    from tartarus.config import Settings
    from tartarus.runtimes.registry import RuntimeRegistry

    async def probe() -> dict[str, tuple[bool, str]]:
        registry = RuntimeRegistry(Settings().state_dir)
        out = {}
        for name in ALL_RUNTIMES:
            result = await registry.probe(name, fresh=True)
            out[name] = (result.works, f"{result.reason} {result.hint}".strip())
        return out

    return asyncio.run(probe())


_PROBES: dict[str, tuple[bool, str]] | None = None


def probes() -> dict[str, tuple[bool, str]]:
    global _PROBES
    if _PROBES is None:
        _PROBES = _probe_all()
        broken = {n: why for n, (ok, why) in _PROBES.items() if n in REQUIRED and not ok}
        if broken:
            pytest.exit(f"required runtimes do not work: {broken}", returncode=3)
    return _PROBES


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "runtimes(*names, why=...): run this `runtime` test only on these runtimes; `why` says"
        " where the others' documented difference is asserted instead",
    )
    config.addinivalue_line("markers", "slow: takes several seconds (for clarity; always run)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`runtime` is parametrised here rather than by the fixture, so that a `runtimes`
    marker can narrow it (a gVisor difference is asserted by a test of its own)."""
    if "runtime" not in metafunc.fixturenames:
        return
    names = RUNTIMES
    suite = metafunc.definition.path.parent.name
    if suite not in MICROVM_SUITES:
        names = tuple(n for n in names if n != "microvm")
    if (marker := metafunc.definition.get_closest_marker("runtimes")) is not None:
        assert marker.kwargs.get("why"), "a runtimes marker must say why"
        names = tuple(n for n in RUNTIMES if n in marker.args)
    metafunc.parametrize("runtime", names, indirect=True)


def working(name: str) -> str:
    """`name` if it works here; else skip (a required one failed the session already)."""
    works, why = probes()[name]
    if not works:
        pytest.skip(f"{name} does not work here: {why}")
    return name


@pytest.fixture
def runtime(request: pytest.FixtureRequest) -> str:
    return working(request.param)


@pytest.fixture(scope="session")
def tartarus_bin() -> str:
    if not Path(TARTARUS).exists():
        pytest.fail(f"{TARTARUS} is missing; run `make test`, which installs it")
    return TARTARUS


@pytest.fixture(scope="session", autouse=True)
def _session_state() -> Iterator[None]:
    yield
    shutil.rmtree(STATE_DIR, ignore_errors=True)
