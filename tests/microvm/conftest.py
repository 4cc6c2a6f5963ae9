"""microVM tests: they are the requirement for the microvm runtime, so a host where it does
not work (no QEMU, no guest kernel) fails them instead of skipping."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tartarus.config import Settings
from tartarus.node.engine import Engine
from tartarus.runtimes.registry import RuntimeRegistry


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    eng = Engine()
    await eng.open()
    try:
        yield eng
    finally:
        await eng.close()


@pytest.fixture
async def microvm() -> str:
    result = await RuntimeRegistry(Settings().state_dir).probe("microvm")
    if not result.works:
        pytest.fail(f"microvm does not work here: {result.reason} {result.hint}".strip())
    return "microvm"
