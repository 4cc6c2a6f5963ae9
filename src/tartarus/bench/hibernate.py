"""Case 8: hibernate -> wake -> first exec, once the lifecycle API has hibernation.

Until the server offers `POST /v1/sandboxes/{id}/hibernate` the case is reported as not
available: no figure is ever made up. When it exists, a sandbox is hibernated (untimed), then
woken (`POST .../wake` if the API has it, else transparently by the exec itself) and the time
to the first exec result is measured, beside a cold create -> first exec on the same runtime.
"""

from __future__ import annotations

import time

import httpx2

from tartarus.bench.context import SANDBOX_TIMEOUT_S, Context, Unavailable
from tartarus.bench.results import CaseResult, Series
from tartarus.sdk import Sandbox

RUNS_FULL, RUNS_QUICK = 10, 3


def _route(ctx: Context, action: str) -> bool:
    return any(r.startswith("/v1/sandboxes/") and r.endswith(f"/{action}") for r in ctx.routes)


def _api(ctx: Context, method: str, path: str, what: str) -> httpx2.Response:
    r = httpx2.request(
        method,
        f"{ctx.server.url}{path}",
        headers={"Authorization": f"Bearer {ctx.key}"},
        timeout=120,
    )
    if r.is_error:
        raise Unavailable(f"{what} failed here: HTTP {r.status_code} {r.text[:200]}")
    return r


def _post(ctx: Context, sandbox_id: str, action: str) -> None:
    _api(ctx, "POST", f"/v1/sandboxes/{sandbox_id}/{action}", action)


def _create(ctx: Context, runtime: str) -> Sandbox:
    return Sandbox.create(
        template="python",
        timeout=SANDBOX_TIMEOUT_S,
        runtime=runtime,
        url=ctx.server.url,
        api_key=ctx.key,
    )


def _checkpointing_runtime(ctx: Context) -> str:
    """The first runtime that can checkpoint here (GET /v1/runtimes), in the server's order."""
    for item in _api(ctx, "GET", "/v1/runtimes", "listing runtimes").json()["items"]:
        if item["available"] and item["capabilities"]["checkpoint"]:
            return str(item["name"])
    raise Unavailable("no runtime can checkpoint on this host (see `tartarus doctor`)")


def hibernate_wake(ctx: Context, result: CaseResult) -> None:
    if not _route(ctx, "hibernate"):
        raise Unavailable("not available (hibernate not implemented)")
    wake = _route(ctx, "wake")
    runtime = _checkpointing_runtime(ctx)
    measured: list[float] = []
    floor: list[float] = []
    for _ in range(ctx.size(RUNS_FULL, RUNS_QUICK)):
        with _create(ctx, runtime) as sbx:
            sbx.commands.run(["true"])
            _post(ctx, sbx.id, "hibernate")
            t0 = time.perf_counter()
            if wake:
                _post(ctx, sbx.id, "wake")
            out = sbx.commands.run(["true"])
            measured.append((time.perf_counter() - t0) * 1000)
            if out.exit_code != 0:
                raise RuntimeError(f"`true` exited {out.exit_code} after waking {sbx.id}")
        t0 = time.perf_counter()
        with _create(ctx, runtime) as cold:
            cold.commands.run(["true"])
            floor.append((time.perf_counter() - t0) * 1000)
    how = "POST wake + exec(true)" if wake else "exec(true), which wakes it"
    result.measured = Series(f"SDK ({runtime}): hibernated sandbox -> {how}", measured)
    result.floor = Series(f"SDK ({runtime}): cold create + first exec(true)", floor)
