"""API overhead: SDK `commands.run("true")` through a server beside the engine's direct exec.

Starts `tartarus server` on a free loopback port with its own state dir, creates one sandbox
there and one in an in-process engine, then times `true` in each, round-robin, and prints
medians and p90 in ms.

    .venv/bin/python bench/api_overhead.py [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

from tartarus.config import Settings
from tartarus.models import SandboxSpec
from tartarus.node.engine import Engine
from tartarus.sdk import Sandbox

TARTARUS = str(Path(sys.executable).parent / "tartarus")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _state_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="tt-", dir="/tmp"))
    path.chmod(0o711)
    return path


def _stats(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs), xs[int(0.9 * (len(xs) - 1))]


async def main(runs: int) -> None:
    server_dir, engine_dir = _state_dir(), _state_dir()
    port = _free_port()
    env = {**os.environ, "TARTARUS_STATE_DIR": str(server_dir)}
    server = subprocess.Popen(
        [TARTARUS, "server", "--port", str(port), "--state-dir", str(server_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    engine = Engine(Settings(state_dir=engine_dir))
    try:
        for _ in range(100):
            try:
                if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            time.sleep(0.1)
        key = (server_dir / "admin.key").read_text().strip()
        await engine.open()
        direct = await engine.create(SandboxSpec(timeout=600))
        sdk: list[float] = []
        raw: list[float] = []
        with Sandbox.create(template="python", timeout=600, url=url, api_key=key) as sbx:
            for i in range(runs + 3):
                t0 = time.perf_counter()
                result = sbx.commands.run(["true"])
                t1 = time.perf_counter()
                exec_result = await engine.exec(direct.id, ["true"])
                t2 = time.perf_counter()
                assert result.exit_code == 0 and exec_result.exit_code == 0
                if i >= 3:
                    sdk.append((t1 - t0) * 1000)
                    raw.append((t2 - t1) * 1000)
        await engine.kill(direct.id)
    finally:
        await engine.close()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        for d in (server_dir, engine_dir):
            shutil.rmtree(d, ignore_errors=True)
    (sm, sp), (rm, rp) = _stats(sdk), _stats(raw)
    print(f"{'variant':34} {'median':>8} {'p90':>8}   ({runs} runs, ms)")
    print(f"{'engine.exec(true), in-process':34} {rm:8.1f} {rp:8.1f}")
    print(f"{'SDK commands.run(true) via server':34} {sm:8.1f} {sp:8.1f}")
    print(f"API overhead (median): {sm - rm:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    asyncio.run(main(parser.parse_args().runs))
