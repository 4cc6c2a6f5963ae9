"""Fixtures for the control plane's tests: an engine on its own state dir (never opened: no
sandbox is started by these tests, only records), and requests built against it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tartarus.config import Settings
from tartarus.control.judging import AdmissionRequest, Usage
from tartarus.models import Isolation, Resources, SandboxSpec
from tartarus.models.policy import EffectivePolicy, Policy, combine
from tartarus.node.engine import Engine

RUNTIMES = {
    "crun": Isolation.CONTAINER,
    "runc": Isolation.CONTAINER,
    "gvisor": Isolation.USER_KERNEL,
}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    state = Path(tempfile.mkdtemp(prefix="tt-", dir="/tmp"))
    state.chmod(0o711)
    eng = Engine(Settings(state_dir=state, image_dir=Settings().image_dir))
    try:
        yield eng
    finally:
        eng.db.close()
        shutil.rmtree(state, ignore_errors=True)


def make_request(
    engine: Engine,
    spec: SandboxSpec | None = None,
    *policies: Policy,
    tenant: str | None = "acme",
    usage: Usage | None = None,
    recent: int = 0,
    working: tuple[str, ...] = ("crun", "runc", "gvisor"),
    snapshot_runtime: str | None = None,
) -> AdmissionRequest:
    policy: EffectivePolicy = combine(policies)
    return AdmissionRequest(
        spec=spec or SandboxSpec(),
        tenant=tenant,
        actor="key-1",
        policy=policy,
        template_resources=Resources(),
        runtimes=RUNTIMES,
        working=working,
        snapshot_runtime=snapshot_runtime,
        count_usage=lambda: usage or Usage(),
        count_recent=lambda: recent,
        db=engine.db,
        now=datetime.now(UTC),
    )
