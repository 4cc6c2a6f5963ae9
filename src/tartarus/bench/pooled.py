"""Cases with a warm pool: pooled create (2), pooled python-ds (3), burst (6), density (7).

Each case sets its pool through the admin API, waits until the pool is full before every
timed run (a refill in the background would compete for the 2 cores and blur the figure),
checks from the pool's hit counter that the run really was served from the pool, and removes
the pool on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from tartarus.bench import floors, memory
from tartarus.bench.context import SANDBOX_TIMEOUT_S, Context, Unavailable
from tartarus.bench.results import CaseResult, Series
from tartarus.sdk import Admin, AsyncSandbox, Sandbox, TartarusError
from tartarus.sdk.models import Pool

WARMUPS = 1
POOL_FILL_TIMEOUT_S = 180.0
PANDAS = "import pandas as pd; print(pd.__version__)"
MIB_IN_4GIB = 4096


def _ms(seconds: float) -> float:
    return seconds * 1000


def require_pools(ctx: Context) -> None:
    if not any(route.startswith("/v1/pools") for route in ctx.routes):
        raise Unavailable("warm pools are not implemented by this server (no /v1/pools)")


def _status(admin: Admin, template: str) -> Pool:
    for status in admin.pools():
        if status.template == template:
            return status
    raise RuntimeError(f"the pool of {template!r} disappeared")


def wait_ready(admin: Admin, template: str, count: int) -> Pool:
    """Poll until `count` pooled sandboxes are ready; the pool's last error if it cannot."""
    deadline = time.monotonic() + POOL_FILL_TIMEOUT_S
    while True:
        status = _status(admin, template)
        if status.ready >= count:
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"pool {template!r} has {status.ready}/{count} ready after"
                f" {POOL_FILL_TIMEOUT_S:.0f}s (last error: {status.last_error})"
            )
        time.sleep(0.05)


@contextlib.contextmanager
def pool(ctx: Context, template: str, size: int) -> Iterator[Admin]:
    require_pools(ctx)
    with Admin(ctx.server.url, ctx.server.admin_key) as admin:
        admin.set_pool(template, min=size)
        try:
            ctx.say(f"filling a pool of {size} {template!r} sandboxes")
            wait_ready(admin, template, size)
            yield admin
        finally:  # a server that is gone cannot answer; the harness reaps what it left
            with contextlib.suppress(TartarusError):
                admin.delete_pool(template)


def _pooled_runs(
    ctx: Context,
    template: str,
    code: str,
    expect: str,
    runs: int,
    floor_argv: list[str],
    chroot: Path | None = None,
) -> tuple[list[float], list[float], int]:
    """(SDK ms, floor ms, misses): pooled create -> run_code, alternating with the floor."""
    measured: list[float] = []
    floor: list[float] = []
    misses = 0
    with pool(ctx, template, 1) as admin:
        for i in range(runs + WARMUPS):
            before = wait_ready(admin, template, 1).hits
            t0 = time.perf_counter()
            with Sandbox.create(
                template=template, timeout=SANDBOX_TIMEOUT_S, url=ctx.server.url, api_key=ctx.key
            ) as sbx:
                out = sbx.run_code(code)
                elapsed = time.perf_counter() - t0
            if out.error is not None or out.stdout.strip() != expect:
                raise RuntimeError(f"run_code({code!r}) gave {out.stdout!r}, {out.error}")
            raw = floors.host_command(floor_argv, chroot=chroot)
            if i < WARMUPS:
                continue
            measured.append(_ms(elapsed))
            floor.append(_ms(raw))
            misses += _status(admin, template).hits == before
    return measured, floor, misses


def _note_misses(result: CaseResult, misses: int) -> None:
    result.extra["pool_misses"] = misses
    if misses:
        result.notes.append(f"{misses} run(s) missed the pool and started cold.")


def pooled_python(ctx: Context, result: CaseResult) -> None:
    require_pools(ctx)
    runs = ctx.size(30, 10)
    measured, floor, misses = _pooled_runs(
        ctx, "python", "print(1)", "1", runs, [floors.HOST_PYTHON, "-c", "pass"]
    )
    result.measured = Series("SDK: pooled create + run_code('print(1)')", measured)
    result.floor = Series("host `/usr/bin/python3 -c pass` (no sandbox)", floor)
    _note_misses(result, misses)


def pooled_pandas(ctx: Context, result: CaseResult) -> None:
    require_pools(ctx)
    rootfs = ctx.rootfs("python-ds")
    version = floors.host_output([floors.HOST_PYTHON, "-c", PANDAS], chroot=rootfs)
    runs = ctx.size(20, 5)
    measured, floor, misses = _pooled_runs(
        ctx,
        "python-ds",
        PANDAS,
        version,
        runs,
        [floors.HOST_PYTHON, "-c", "import pandas"],
        chroot=rootfs,
    )
    result.measured = Series(f"SDK: pooled python-ds create + run_code({PANDAS!r})", measured)
    result.floor = Series(
        "`python3 -c 'import pandas'` chrooted into the python-ds image (no sandbox)", floor
    )
    result.extra["pandas"] = version
    _note_misses(result, misses)
    result.notes.append(
        "The floor runs the same pandas build (the python-ds image's own python3 and"
        " site-packages, via chroot as nobody) with no sandbox around it."
    )


async def _burst(ctx: Context, count: int) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    started: list[AsyncSandbox] = []

    async def one() -> None:
        t0 = time.perf_counter()
        try:
            sbx = await AsyncSandbox.create(
                template="python", timeout=SANDBOX_TIMEOUT_S, url=ctx.server.url, api_key=ctx.key
            )
            started.append(sbx)
            out = await sbx.commands.run(["true"])
        except TartarusError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        if out.exit_code != 0:
            errors.append(f"`true` exited {out.exit_code}")
            return
        latencies.append(_ms(time.perf_counter() - t0))

    try:
        await asyncio.gather(*(one() for _ in range(count)))
    finally:  # killed after the burst, so kills do not compete with it
        await asyncio.gather(*(_kill(s) for s in started), return_exceptions=True)
    return latencies, errors


async def _kill(sbx: AsyncSandbox) -> None:
    try:
        await sbx.kill()
    finally:
        await sbx.close()


def burst(ctx: Context, result: CaseResult) -> None:
    require_pools(ctx)
    count, size = ctx.size(50, 20), ctx.size(10, 5)
    reference = ctx.results.get(2)
    if reference is None or reference.measured is None:
        ctx.say("case 2 did not run: measuring a pooled p50 for reference")
        samples, _, _ = _pooled_runs(
            ctx, "python", "print(1)", "1", 5, [floors.HOST_PYTHON, "-c", "pass"]
        )
    else:
        samples = reference.measured.samples
    with pool(ctx, "python", size) as admin:
        before = _status(admin, "python")
        latencies, errors = asyncio.run(_burst(ctx, count))
        after = _status(admin, "python")
    if not latencies:
        raise RuntimeError(f"every create of the burst failed: {errors[:3]}")
    result.measured = Series(
        f"{count} concurrent SDK creates + first exec(true), pool of {size}", latencies
    )
    result.floor = Series("pooled create + run_code p50 (case 2)", samples)
    result.failures = len(errors)
    result.extra |= {
        "concurrent": count,
        "pool": size,
        "pool_hits": after.hits - before.hits,
        "pool_misses": after.misses - before.misses,
        "errors": errors[:5],
    }
    result.notes.append("Target: zero failures and p99 <= 10x the pooled p50 of case 2.")


def density(ctx: Context, result: CaseResult) -> None:
    require_pools(ctx)
    size = ctx.size(10, 5)
    with pool(ctx, "python", size):
        time.sleep(1.0)  # idle: let the agents finish starting up
        live = _live_sandboxes(ctx, size)
        pss = [memory.sandbox_pss_mib(sid) for sid in live]
    if len(pss) != size:
        result.notes.append(f"measured {len(pss)} live sandboxes for a pool of {size}.")
    host = memory.host_idle_python_pss_mib(size)
    result.measured = Series(f"PSS per idle pooled `python` sandbox ({len(pss)} pooled)", pss)
    result.floor = Series(f"PSS of an idle host python3 ({size} side by side)", host)
    median = result.measured.summary.median
    result.extra["fit_in_4gib"] = int(MIB_IN_4GIB // median) if median > 0 else None
    result.notes.append(
        "PSS summed over the processes of each sandbox's memory cgroup (smaps_rollup);"
        " shared pages are split among the sandboxes that map them."
    )


def _live_sandboxes(ctx: Context, expected: int, timeout: float = 10.0) -> list[str]:
    """Ids of the server's live sandboxes, once only the pool's `expected` are left (those
    of an earlier case may still be tearing down): pooled ones belong to no tenant, so the
    server's state dir is where they are found."""
    deadline = time.monotonic() + timeout
    while True:
        root = ctx.server.state_dir / "sandboxes"
        live = [d.name for d in root.iterdir() if d.is_dir() and memory.cgroup_pids(d.name)]
        if len(live) == expected or time.monotonic() > deadline:
            return live
        time.sleep(0.1)
