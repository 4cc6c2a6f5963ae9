"""Cases without a warm pool: cold create (1), exec round-trip (4) and throughput (5).

Latency cases alternate the SDK path and its floor run by run, so background load (this is a
shared 2-core machine) hits both alike; the first runs of each are warm-ups and dropped.
Sandboxes are killed outside the timed span, each in a `finally`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from tartarus.bench.context import SANDBOX_TIMEOUT_S, Context
from tartarus.bench.results import CaseResult, Series
from tartarus.bench.stats import window_rates
from tartarus.sdk import AsyncSandbox, Sandbox, TartarusError

WARMUPS = 2
PY_PASS = ["python3", "-c", "pass"]
CONCURRENCY = 8


def _ms(seconds: float) -> float:
    return seconds * 1000


def _create(ctx: Context, template: str = "python") -> Sandbox:
    return Sandbox.create(
        template=template, timeout=SANDBOX_TIMEOUT_S, url=ctx.server.url, api_key=ctx.key
    )


def phase_medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median of each phase timing the server recorded (ms since the create began), in the
    order they happen."""
    names = {name for run in runs for name in run}
    medians = {n: round(statistics.median([r[n] for r in runs if n in r]), 1) for n in names}
    return dict(sorted(medians.items(), key=lambda item: item[1]))


def cold_create(ctx: Context, result: CaseResult) -> None:
    rootfs = ctx.rootfs("python")
    runs = ctx.size(20, 8)
    measured: list[float] = []
    floor: list[float] = []
    phases: list[dict[str, float]] = []
    runtimes: set[str] = set()
    for i in range(runs + WARMUPS):
        t0 = time.perf_counter()
        with _create(ctx) as sbx:  # killed on the way out
            out = sbx.commands.run(PY_PASS)
            elapsed = time.perf_counter() - t0
            info = sbx.info()
        if out.exit_code != 0:
            raise RuntimeError(f"python3 -c pass exited {out.exit_code}: {out.stderr.strip()}")
        raw = ctx.raw.run(rootfs, ["/usr/bin/python3", "-c", "pass"])
        if i >= WARMUPS:
            measured.append(_ms(elapsed))
            floor.append(_ms(raw))
            phases.append(info.timings_ms)
            runtimes.add(info.runtime)
    result.measured = Series("SDK: create sandbox + commands.run(python3 -c pass)", measured)
    result.floor = Series("raw `crun run` of python3 -c pass, same rootfs and isolation", floor)
    result.extra |= {"runtime": sorted(runtimes), "phases_ms": phase_medians(phases)}
    result.notes.append(
        "The floor runs the built `python` image read-only with the bundle the engine writes"
        " (namespaces, seccomp, cgroup limits); the sandbox adds its overlay and guest agent."
    )


def exec_roundtrip(ctx: Context, result: CaseResult) -> None:
    rootfs = ctx.rootfs("python")
    runs = ctx.size(100, 30)
    measured: list[float] = []
    floor: list[float] = []
    with _create(ctx) as sbx, ctx.raw.detached(rootfs) as cid:
        for i in range(runs + WARMUPS):
            t0 = time.perf_counter()
            out = sbx.commands.run(["true"])
            elapsed = time.perf_counter() - t0
            if out.exit_code != 0:
                raise RuntimeError(f"`true` exited {out.exit_code} in {sbx.id}")
            raw = ctx.raw.exec(cid, ["/bin/true"])
            if i >= WARMUPS:
                measured.append(_ms(elapsed))
                floor.append(_ms(raw))
    result.measured = Series("SDK: commands.run(true) in a running sandbox", measured)
    result.floor = Series("`crun exec` of true in a raw crun container, same rootfs", floor)


async def _loop(
    once: Callable[[], Awaitable[None]],
    start: float,
    deadline: float,
    completions: list[float],
    latencies: list[float],
    errors: list[str],
) -> None:
    while (t0 := time.perf_counter()) < deadline:
        try:
            await once()
        except (TartarusError, RuntimeError) as exc:
            errors.append(str(exc))
            await asyncio.sleep(0.05)  # a failing server must not turn this into a spin
            continue
        t1 = time.perf_counter()
        if t1 <= deadline:  # in flight at the end: finished, but not counted
            completions.append(t1 - start)
            latencies.append(_ms(t1 - t0))


async def _throughput(
    once: Callable[[], Awaitable[None]], duration: float
) -> tuple[list[float], list[float], list[str]]:
    completions: list[float] = []
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    await asyncio.gather(
        *(
            _loop(once, start, start + duration, completions, latencies, errors)
            for _ in range(CONCURRENCY)
        )
    )
    return completions, latencies, errors


def throughput(ctx: Context, result: CaseResult) -> None:
    rootfs = ctx.rootfs("python")
    duration = float(ctx.size(30, 8))

    async def sdk_once() -> None:
        sbx = await AsyncSandbox.create(
            template="python", timeout=SANDBOX_TIMEOUT_S, url=ctx.server.url, api_key=ctx.key
        )
        async with sbx:  # kills it
            out = await sbx.commands.run(["true"])
        if out.exit_code != 0:
            raise RuntimeError(f"`true` exited {out.exit_code} in {sbx.id}")

    async def raw_once() -> None:
        await ctx.raw.run_async(rootfs, ["/bin/true"])

    raw_done, raw_lat, raw_err = asyncio.run(_throughput(raw_once, duration))
    if raw_err:
        raise RuntimeError(f"the raw crun loop failed: {raw_err[0]}")
    sdk_done, sdk_lat, sdk_err = asyncio.run(_throughput(sdk_once, duration))
    if not sdk_done:
        raise RuntimeError(f"no sandbox completed in {duration:.0f}s: {sdk_err[:1]}")
    result.measured = Series(
        f"SDK: create + exec(true) + kill, {CONCURRENCY} clients, {duration:.0f}s",
        window_rates(sdk_done, duration),
        value=len(sdk_done) / duration,
    )
    result.floor = Series(
        f"raw `crun run true` loop, {CONCURRENCY} at once, {duration:.0f}s",
        window_rates(raw_done, duration),
        value=len(raw_done) / duration,
    )
    result.failures = len(sdk_err)
    result.extra |= {
        "completed": len(sdk_done),
        "floor_completed": len(raw_done),
        "latency_ms": Series("per iteration", sdk_lat).summary.to_dict(),
        "floor_latency_ms": Series("per iteration", raw_lat).summary.to_dict(),
        "errors": sdk_err[:5],
    }
    result.notes.append(
        "Samples are completions per 1 s window; the headline is completions / duration."
    )
