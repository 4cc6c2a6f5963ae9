"""Which runtimes exist, which work on this host, and which one a sandbox gets.

Probing really starts a tiny sandbox, so its result is cached per runtime binary (path,
size, mtime) in the state dir; `tartarus doctor` always probes afresh. The default is the
first runtime in `PREFERENCE` whose probe passed: crun is the fastest here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from tartarus.errors import InvalidRequestError, RuntimeUnavailableError
from tartarus.runtimes.base import ProbeResult, Runtime
from tartarus.runtimes.crun import CrunRuntime
from tartarus.runtimes.gvisor import GvisorRuntime
from tartarus.runtimes.runc import RuncRuntime

RUNTIME_CLASSES: dict[str, type[Runtime]] = {
    "crun": CrunRuntime,
    "runc": RuncRuntime,
    "gvisor": GvisorRuntime,
}
# gvisor is opt-in (`--runtime gvisor`): stronger isolation, about 0.3 s to start
PREFERENCE = ("crun", "runc")


class RuntimeRegistry:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "runtime"
        self.runtimes: dict[str, Runtime] = {
            name: cls(self.root / name) for name, cls in RUNTIME_CLASSES.items()
        }
        self._cache_file = self.root / "probes.json"

    def get(self, name: str) -> Runtime:
        try:
            return self.runtimes[name]
        except KeyError:
            known = ", ".join(self.runtimes)
            raise InvalidRequestError(f"unknown runtime {name!r}; known: {known}") from None

    async def probe(self, name: str, *, fresh: bool = False) -> ProbeResult:
        runtime = self.get(name)
        key = _binary_key(getattr(runtime, "binary", name))
        cache = self._load_cache()
        entry = cache.get(name)
        if not fresh and entry and entry.get("key") == key and key is not None:
            stored = entry["result"]
            if isinstance(stored, dict):
                return ProbeResult(**stored)
        result = await runtime.probe()
        cache[name] = {"key": key, "result": dataclasses.asdict(result)}
        self._save_cache(cache)
        return result

    async def select(self, requested: str | None) -> Runtime:
        if requested:
            runtime = self.get(requested)
            result = await self.probe(requested)
            if not result.works:
                raise RuntimeUnavailableError(
                    f"runtime {requested!r} does not work on this host: {result.reason}"
                    + (f" ({result.hint})" if result.hint else "")
                )
            return runtime
        reasons = []
        for name in PREFERENCE:
            result = await self.probe(name)
            if result.works:
                return self.runtimes[name]
            reasons.append(f"{name}: {result.reason}")
        raise RuntimeUnavailableError("no runtime works on this host (" + "; ".join(reasons) + ")")

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


def _binary_key(binary: str) -> str | None:
    path = shutil.which(binary)
    if path is None:
        return None
    st = os.stat(path)
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"
