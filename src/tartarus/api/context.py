"""What every route needs, hung on `app.state` so several apps (tests) never share globals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from tartarus.api.execs import ExecRegistry
from tartarus.api.metrics import Metrics
from tartarus.config import Settings
from tartarus.node.engine import Engine
from tartarus.store.auth import AuthStore


@dataclass
class Context:
    engine: Engine
    settings: Settings
    auth: AuthStore
    metrics: Metrics
    execs: ExecRegistry = field(default_factory=ExecRegistry)


async def get_context(request: Request) -> Context:  # async: a sync one costs a thread hop
    ctx = request.app.state.ctx
    assert isinstance(ctx, Context)
    return ctx


# NB: dependencies are `async def` (or trivially sync like this one) on purpose: the engine
# lives in the event loop's thread (its mount namespace is per-thread), never the threadpool.
Ctx = Annotated[Context, Depends(get_context)]
