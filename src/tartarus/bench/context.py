"""What every benchmark case gets: the server, a key, the run's size, the raw-runtime floor
helper and the results so far; and what a case is (id, title, target, the function)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tartarus.bench.floors import RawCrun
from tartarus.bench.harness import BenchServer
from tartarus.bench.results import CaseResult, Stat
from tartarus.bench.stats import Target
from tartarus.images.cache import ImageCache
from tartarus.images.specs import builtin_specs

SANDBOX_TIMEOUT_S = 300  # a sandbox the harness fails to kill still ends by itself


class Unavailable(Exception):
    """The case cannot run on this build (a feature not implemented yet): say why."""


@dataclass
class Context:
    server: BenchServer
    key: str  # a member key of the benchmark's tenant
    quick: bool
    raw: RawCrun
    image_dir: Path
    routes: set[str]
    results: dict[int, CaseResult] = field(default_factory=dict)
    verbose: bool = True

    def say(self, message: str) -> None:
        if self.verbose:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def rootfs(self, template: str) -> Path:
        """The built image of a built-in template: the very rootfs its sandboxes get."""
        spec = builtin_specs()[template]
        cache = ImageCache(self.image_dir)
        digest = spec.content_hash()
        if not cache.exists(digest):
            raise RuntimeError(
                f"template {template!r} is not built: run `tartarus template build {template}`"
            )
        return cache.rootfs(digest)


@dataclass(frozen=True)
class Case:
    id: int
    key: str
    title: str
    unit: str
    target: Target | None
    run: Callable[[Context, CaseResult], None]
    compare: Stat = "median"
    templates: tuple[str, ...] = ("python",)

    def result(self) -> CaseResult:
        return CaseResult(
            id=self.id,
            key=self.key,
            title=self.title,
            unit=self.unit,
            target=self.target,
            compare=self.compare,
        )
