"""Case 9: a microVM sandbox (a clone of its template's snapshot) -> first `run_code`, beside
the same through the same SDK on crun, alternating.

No target: where /dev/kvm cannot boot a stock kernel (this machine kind: PVM) the guest runs
under TCG, QEMU's software CPU, and the figure says what VM isolation costs on this host.
Each runtime's first sandbox is untimed: it boots the template VM (or starts the zygote).
"""

from __future__ import annotations

import time

import httpx2

from tartarus.bench.context import SANDBOX_TIMEOUT_S, Context, Unavailable
from tartarus.bench.results import CaseResult, Series
from tartarus.sdk import Sandbox

RUNS_FULL, RUNS_QUICK = 10, 3


def _available(ctx: Context) -> str:
    """The accelerator microvm got here (doctor's detail), or Unavailable saying why not."""
    r = httpx2.get(
        f"{ctx.server.url}/v1/runtimes",
        headers={"Authorization": f"Bearer {ctx.key}"},
        timeout=120,
    )
    r.raise_for_status()
    for item in r.json()["items"]:
        if item["name"] == "microvm":
            if not item["available"]:
                raise Unavailable(f"microvm does not work here: {item.get('reason', '')}")
            return str(item.get("detail") or "").split(" (")[0]
    raise Unavailable("this server has no microvm runtime")


def _create_and_run(ctx: Context, runtime: str) -> float:
    """ms from create to the result of run_code('print(1)')."""
    t0 = time.perf_counter()
    with Sandbox.create(
        template="python",
        timeout=SANDBOX_TIMEOUT_S,
        runtime=runtime,
        url=ctx.server.url,
        api_key=ctx.key,
    ) as sbx:
        out = sbx.run_code("print(1)")
        elapsed = (time.perf_counter() - t0) * 1000
    if out.error is not None or out.stdout.strip() != "1":
        raise RuntimeError(f"run_code('print(1)') on {runtime} gave {out.stdout!r}, {out.error}")
    return elapsed


def microvm_clone(ctx: Context, result: CaseResult) -> None:
    accelerator = _available(ctx)
    for runtime in ("microvm", "crun"):
        ctx.say(f"warming {runtime} (untimed)")
        _create_and_run(ctx, runtime)
    measured: list[float] = []
    floor: list[float] = []
    for _ in range(ctx.size(RUNS_FULL, RUNS_QUICK)):
        measured.append(_create_and_run(ctx, "microvm"))
        floor.append(_create_and_run(ctx, "crun"))
    result.measured = Series(
        f"SDK (microvm, {accelerator or 'accelerator unknown'}): create + run_code('print(1)')",
        measured,
    )
    result.floor = Series("SDK (crun): create + run_code('print(1)')", floor)
