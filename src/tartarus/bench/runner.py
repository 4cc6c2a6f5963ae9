"""Runs the selected cases against a fresh `tartarus server` and writes the report.

Order of things: the machine is described (load average before we add any), the server is
started, then this thread enters the engine's private mount namespace for the raw-crun
floors (after the server started, so the server sets up its own as it does in production).
A case that raises is recorded as `error` and the run goes on; Ctrl-C or SIGTERM stops it,
and on every way out the pools, sandboxes, server, raw containers and temp dirs are removed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from tartarus.bench import report
from tartarus.bench.cases import select
from tartarus.bench.context import Case, Context, Unavailable
from tartarus.bench.floors import RawCrun
from tartarus.bench.harness import BenchServer
from tartarus.bench.results import CaseResult
from tartarus.config import Settings
from tartarus.images.cache import ImageCache
from tartarus.images.specs import builtin_specs
from tartarus.runtimes import hostns
from tartarus.sdk import Admin, Sandbox, TartarusError

TENANT = "bench"


class BenchError(Exception):
    """The benchmark cannot start (bad input or a missing prerequisite)."""


@dataclass
class Outcome:
    json_path: Path
    report: dict[str, Any]

    @property
    def errors(self) -> list[int]:
        return [c["id"] for c in self.report["cases"] if c["status"] == "error"]


def preflight(cases: list[Case], image_dir: Path) -> None:
    """Fail before anything starts: matplotlib present, the templates the cases use built."""
    if importlib.util.find_spec("matplotlib") is None:
        raise BenchError(
            "matplotlib is missing: install the bench extra (pip install -e '.[bench]')"
        )
    cache = ImageCache(image_dir)
    for template in sorted({t for case in cases for t in case.templates}):
        if not cache.exists(builtin_specs()[template].content_hash()):
            raise BenchError(
                f"template {template!r} is not built: run `tartarus template build {template}`"
            )


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every cleanup below runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _member_key(server: BenchServer) -> str:
    with Admin(server.url, server.admin_key) as admin:
        admin.create_tenant(TENANT)
        key = admin.create_key(TENANT, role="member", name="bench").key
    if key is None:
        raise BenchError("the server returned no key secret")
    return key


def _clean_server(ctx: Context) -> None:
    """Remove pools and kill the tenant's sandboxes through the API (before the server
    stops: a stopped server leaves them running by design)."""
    if any(route.startswith("/v1/pools") for route in ctx.routes):
        with contextlib.suppress(TartarusError), Admin(ctx.server.url, ctx.server.admin_key) as a:
            for status in a.pools():
                a.delete_pool(status.template)
    with contextlib.suppress(TartarusError):
        for info in Sandbox.list(url=ctx.server.url, api_key=ctx.key):
            with Sandbox.connect(info.id, url=ctx.server.url, api_key=ctx.key):
                pass  # leaving the block kills it


def _run_case(ctx: Context, case: Case) -> CaseResult:
    result = case.result()
    ctx.say(f"case {case.id} ({case.key}): {case.title}")
    t0 = time.perf_counter()
    try:
        case.run(ctx, result)
    except Unavailable as exc:
        result.unavailable(str(exc))
    except Exception as exc:  # one broken case must not hide the others' figures
        result.unavailable(f"{type(exc).__name__}: {exc}")
        result.status = "error"
    ctx.say(f"case {case.id}: {result.status} in {time.perf_counter() - t0:.1f}s")
    return result


def run(*, quick: bool, out_dir: Path, only: str | None = None, verbose: bool = True) -> Outcome:
    try:
        cases = select(only)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    settings = Settings()
    preflight(cases, settings.image_dir)
    machine = report.machine_info()
    started, t0 = datetime.now(UTC), time.perf_counter()
    results: list[CaseResult] = []
    work = Path(tempfile.mkdtemp(prefix="ttb-raw-", dir="/tmp"))
    work.chmod(0o711)  # container roots (unprivileged host uids) must traverse to bundles
    raw = RawCrun(work)
    try:
        with _sigterm_interrupts(), BenchServer() as server:
            if hostns.is_hybrid_cgroup_host():
                hostns.enter()
            ctx = Context(
                server=server,
                key=_member_key(server),
                quick=quick,
                raw=raw,
                image_dir=settings.image_dir,
                routes=server.openapi_paths(),
                verbose=verbose,
            )
            try:
                for case in cases:
                    result = _run_case(ctx, case)
                    results.append(result)
                    ctx.results[case.id] = result
            finally:
                _clean_server(ctx)
    finally:
        raw.close()
        shutil.rmtree(work, ignore_errors=True)
    data = report.build(
        results,
        machine=machine,
        started=started,
        duration_s=time.perf_counter() - t0,
        quick=quick,
    )
    return Outcome(report.write(data, out_dir), data)
