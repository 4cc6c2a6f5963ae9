from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tartarus.node.engine import Engine


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    eng = Engine()
    await eng.open()
    try:
        yield eng
    finally:
        await eng.close()
