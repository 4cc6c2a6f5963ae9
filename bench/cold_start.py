"""Cold start: `tartarus run -- python3 -c pass` beside raw `crun run` of the same command.

Runs the variants round-robin so background load hits them alike, and prints medians and
p90 in ms. The raw floor uses the same rootfs (the built `python` image, read-only) and the
same isolation config as a sandbox, started directly with crun from this process's private
mount namespace. The in-process variant is the engine without the CLI's interpreter start-up.

    .venv/bin/python bench/cold_start.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tartarus.config import Settings
from tartarus.images.catalog import TemplateCatalog
from tartarus.models import Resources, SandboxSpec
from tartarus.node.engine import Engine
from tartarus.runtimes import hostns
from tartarus.runtimes.base import ContainerConfig
from tartarus.runtimes.bundle import CGROUP_PARENT, write_bundle

CMD = ["python3", "-c", "pass"]
TARTARUS = str(Path(sys.executable).parent / "tartarus")


def _raw_crun(rootfs: Path, work: Path) -> Callable[[], Awaitable[None]]:
    counter = iter(range(10**9))

    async def once() -> None:
        cid = f"bench-raw-{os.getpid()}-{next(counter)}"
        bundle = work / cid
        config = ContainerConfig(
            id=cid,
            rootfs=rootfs,
            args=["/usr/bin/python3", "-c", "pass"],
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
            resources=Resources(),
        )
        spec_path = write_bundle(config, bundle)
        spec = json.loads(spec_path.read_text())
        spec["root"]["readonly"] = True  # the shared image must stay untouched
        spec_path.write_text(json.dumps(spec))
        proc = await asyncio.create_subprocess_exec(
            "crun",
            "--root",
            str(work / "state"),
            "run",
            "--bundle",
            str(bundle),
            cid,
            stdin=subprocess.DEVNULL,
        )
        if await proc.wait() != 0:
            raise SystemExit("raw crun run failed")
        shutil.rmtree(bundle)
        hostns.remove_shadow_cgroup(f"{CGROUP_PARENT}/{cid}")

    return once


def _cli() -> Callable[[], Awaitable[None]]:
    async def once() -> None:
        proc = await asyncio.create_subprocess_exec(
            TARTARUS, "run", "--runtime", "crun", "--", *CMD
        )
        if await proc.wait() != 0:
            raise SystemExit("tartarus run failed")

    return once


def _engine(engine: Engine) -> Callable[[], Awaitable[None]]:
    async def once() -> None:
        sandbox = await engine.run(
            SandboxSpec(template="python", command=tuple(CMD), runtime="crun")
        )
        if sandbox.exit_code != 0:
            raise SystemExit(f"engine run failed: {sandbox.reason}")

    return once


async def main(runs: int) -> None:
    settings = Settings()
    engine = Engine(settings)
    await engine.open()
    image = TemplateCatalog.from_settings(settings, engine.db).ensure_built("python")
    work = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
    work.chmod(0o711)
    variants = {
        "raw crun run": _raw_crun(engine.images.rootfs(image.hash), work),
        "tartarus run (CLI)": _cli(),
        "engine.run (in-process)": _engine(engine),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for i in range(runs + 2):
            for name, once in variants.items():
                t0 = time.perf_counter()
                await once()
                if i >= 2:  # warm-ups
                    samples[name].append((time.perf_counter() - t0) * 1000)
    finally:
        await engine.close()
        shutil.rmtree(work, ignore_errors=True)
    floor = statistics.median(samples["raw crun run"])
    print(f"{'variant':26} {'median':>8} {'p90':>8} {'x floor':>8}   ({runs} runs, ms)")
    for name, xs in samples.items():
        xs.sort()
        p90 = xs[int(0.9 * (len(xs) - 1))]
        med = statistics.median(xs)
        print(f"{name:26} {med:8.1f} {p90:8.1f} {med / floor:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if hostns.is_hybrid_cgroup_host():
        hostns.enter()
    asyncio.run(main(args.runs))
