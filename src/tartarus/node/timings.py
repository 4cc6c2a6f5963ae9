"""Phase timings: where a sandbox's start-up time went, recorded on the sandbox itself.

Each phase is a duration in ms (not a running total), so the figures add up and a slow
phase stands out: admit (the API's checks before the engine), image, schedule (runtime
choice and the pool lookup), queue (the create job), overlay, network (Styx's netns and
rules, for `allowlist`/`open` sandboxes only), runtime (the container up),
pool (a warm sandbox handed out instead), guest_ready (the guest agent first answers) and
first_exec (from the start of the create to the first command's result: time to
interactive). `create` is the total until the sandbox is running. Listeners (the API's
Prometheus histograms) see each phase as it is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

PhaseListener = Callable[[str, float], None]


class PhaseClock:
    def __init__(self, started: float | None = None) -> None:
        self.started = time.perf_counter() if started is None else started
        self._last = self.started
        self.phases: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        """The phase that just ended took the time since the previous mark."""
        now = time.perf_counter()
        self.phases[phase] = round((now - self._last) * 1000, 2)
        self._last = now

    def since_start(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 2)
