"""Which runtimes exist, which work on this host, and which one a sandbox gets.

Probing really starts a tiny sandbox (and pauses, checkpoints and restores it), so its result
is cached per runtime binary and helper (path, size, mtime; runc's CRIU counts) in the state
dir; `tartarus doctor` always probes afresh. The default is the first runtime in `PREFERENCE`
whose probe passed: crun is the fastest here. `report()` is what `tartarus doctor` and
`GET /v1/runtimes` show: each runtime with its probe and the capabilities it confirmed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tartarus.errors import InvalidRequestError, RuntimeUnavailableError
from tartarus.models import Isolation
from tartarus.runtimes.base import Capabilities, ProbeResult, Runtime
from tartarus.runtimes.crun import CrunRuntime
from tartarus.runtimes.gvisor import GvisorRuntime
from tartarus.runtimes.microvm import MicroVMRuntime
from tartarus.runtimes.runc import RuncRuntime

RUNTIME_CLASSES: dict[str, type[Runtime]] = {
    "crun": CrunRuntime,
    "runc": RuncRuntime,
    "gvisor": GvisorRuntime,
    "microvm": MicroVMRuntime,
}
# gvisor is opt-in (`--runtime gvisor`): stronger isolation, about 0.3 s to start; microvm
# (seconds to boot under TCG) comes last, so it is never the default where a container works
PREFERENCE = ("crun", "runc", "microvm")
# `--runtime auto` with a required isolation: the fastest first, skipping weaker ones
BY_SPEED = ("crun", "runc", "gvisor")
AUTO = "auto"
PROBE_FORMAT = 3  # bump when a probe learns to check more: older cached results are stale


@dataclass(frozen=True)
class RuntimeReport:
    name: str
    probe: ProbeResult
    capabilities: Capabilities  # as confirmed on this host
    default: bool  # the one a sandbox gets when it asks for none

    @property
    def missing(self) -> dict[str, str]:
        """Capability -> why it is not available here."""
        out: dict[str, str] = {}
        if not self.probe.works:
            out["pause"] = "the runtime does not work here"
        elif not self.capabilities.pause:
            out["pause"] = self.probe.pause_error or "not supported by this runtime"
        if not self.probe.works:
            out["checkpoint"] = "the runtime does not work here"
        elif not self.capabilities.checkpoint:
            out["checkpoint"] = self.probe.checkpoint_error or "not supported by this runtime"
        return out


class RuntimeRegistry:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "runtime"
        self.runtimes: dict[str, Runtime] = {
            name: cls(self.root / name) for name, cls in RUNTIME_CLASSES.items()
        }
        self._cache_file = self.root / "probes.json"
        # one probe sandbox per runtime at a time: they share an id and a directory
        self._probing = {name: asyncio.Lock() for name in self.runtimes}

    def get(self, name: str) -> Runtime:
        try:
            return self.runtimes[name]
        except KeyError:
            known = ", ".join(self.runtimes)
            raise InvalidRequestError(f"unknown runtime {name!r}; known: {known}") from None

    async def probe(self, name: str, *, fresh: bool = False) -> ProbeResult:
        runtime = self.get(name)
        binaries = getattr(runtime, "probe_binaries", lambda: [getattr(runtime, "binary", name)])
        key = _binary_key(*binaries())
        if key is not None and (extra := getattr(runtime, "probe_extra_key", None)) is not None:
            key += ":" + extra()  # files beside the binaries (microvm: kernel, initramfs)
        async with self._probing[name]:
            cache = self._load_cache()
            entry = cache.get(name)
            if not fresh and entry and entry.get("key") == key and key is not None:
                stored = entry["result"]
                if isinstance(stored, dict):
                    return ProbeResult(**stored)
            result = await runtime.probe()
            cache = self._load_cache()  # another process may have written meanwhile
            cache[name] = {"key": key, "result": dataclasses.asdict(result)}
            self._save_cache(cache)
            return result

    async def capabilities(self, name: str) -> Capabilities:
        """What runtime `name` can do on this host (its cached probe)."""
        return self.get(name).probed_capabilities(await self.probe(name))

    async def report(
        self, *, fresh: bool = False, default: str | None = None
    ) -> list[RuntimeReport]:
        """Every runtime with its probe and confirmed capabilities. `default`: the configured
        default runtime, if any (else the first of `PREFERENCE` that works)."""
        probes = {name: await self.probe(name, fresh=fresh) for name in self.runtimes}
        if default is None:
            default = next((n for n in PREFERENCE if probes[n].works), None)
        return [
            RuntimeReport(
                name, result, self.runtimes[name].probed_capabilities(result), name == default
            )
            for name, result in probes.items()
        ]

    async def select(
        self,
        requested: str | None,
        isolation: Isolation | None = None,
        *,
        default: str | None = None,
    ) -> Runtime:
        """The runtime a sandbox gets. `requested` (None or "auto": choose) must give at
        least `isolation`, else InvalidRequestError; `default` (a snapshot's runtime, the
        configured one) is taken if it is strong enough, else the choice is the fastest
        working runtime at or above `isolation` (`BY_SPEED`)."""
        if requested == AUTO:
            requested = None
        if requested:
            runtime = self.get(requested)
            if isolation is not None and runtime.capabilities.isolation.rank < isolation.rank:
                raise InvalidRequestError(
                    f"runtime {requested!r} gives {runtime.capabilities.isolation.value}"
                    f" isolation, weaker than the required {isolation.value}"
                )
            result = await self.probe(requested)
            if not result.works:
                raise RuntimeUnavailableError(
                    f"runtime {requested!r} does not work on this host: {result.reason}"
                    + (f" ({result.hint})" if result.hint else "")
                )
            return runtime
        if default and default != AUTO:
            level = self.get(default).capabilities.isolation
            if isolation is None or level.rank >= isolation.rank:
                return await self.select(default)
        # without a required isolation gVisor stays opt-in (~0.3 s to start)
        order = PREFERENCE if isolation is None else BY_SPEED
        reasons = []
        for name in order:
            level = self.runtimes[name].capabilities.isolation
            if isolation is not None and level.rank < isolation.rank:
                continue
            result = await self.probe(name)
            if result.works:
                return self.runtimes[name]
            reasons.append(f"{name}: {result.reason}")
        if isolation is not None:
            raise RuntimeUnavailableError(
                f"no runtime with {isolation.value} isolation or stronger works on this host"
                + (" (" + "; ".join(reasons) + ")" if reasons else "")
            )
        raise RuntimeUnavailableError("no runtime works on this host (" + "; ".join(reasons) + ")")

    async def strongest(self) -> Isolation:
        """The strongest isolation a working runtime gives here (quarantine goes there)."""
        best = Isolation.CONTAINER
        for name in BY_SPEED:
            level = self.runtimes[name].capabilities.isolation
            if level.rank > best.rank and (await self.probe(name)).works:
                best = level
        return best

    def _load_cache(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self._cache_file.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_cache(self, cache: dict[str, dict[str, object]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(self._cache_file)


def _binary_key(binary: str, *helpers: str) -> str | None:
    """The runtime binary (None if missing) and its helpers (a missing one counts as such)."""
    parts = [str(PROBE_FORMAT)]
    for i, name in enumerate((binary, *helpers)):
        path = shutil.which(name)
        if path is None:
            if i == 0:
                return None
            parts.append(f"{name}:missing")
            continue
        st = os.stat(path)
        parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    return ":".join(parts)
