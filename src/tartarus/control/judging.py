"""What a judge sees and what it answers: the contract every admission judge implements.

A judge is a callable `(AdmissionRequest) -> Verdict` with a `name`. It may accept (and
hand back a changed spec: defaults filled, caps applied), reject with a reason (the caller
gets HTTP 403 naming the judge) or quarantine with a reason (the chain then forces the spec
onto the strongest runtime, a strict seccomp profile and no network: `quarantine.py`).
Judges are synchronous and read what they need from the request: the chain gathers the
slow facts (policies, runtimes that work) once, before the first judge; the tenant's usage
and recent creates are counted on first use, so a chain whose policy sets no quota or rate
limit never reads them (each is a query over the tenant's sandboxes or audit records).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from tartarus.models import Isolation, Resources, SandboxSpec
from tartarus.models.policy import EffectivePolicy
from tartarus.store import Database


class Outcome(enum.StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    QUARANTINE = "quarantine"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str = ""
    spec: SandboxSpec | None = None  # the spec to continue with, if the judge changed it

    @classmethod
    def accept(cls, spec: SandboxSpec | None = None, reason: str = "") -> Verdict:
        return cls(Outcome.ACCEPT, reason, spec)

    @classmethod
    def reject(cls, reason: str) -> Verdict:
        return cls(Outcome.REJECT, reason)

    @classmethod
    def quarantine(cls, reason: str, spec: SandboxSpec | None = None) -> Verdict:
        return cls(Outcome.QUARANTINE, reason, spec)


@dataclass(frozen=True)
class Usage:
    """What a tenant's live sandboxes hold (plus admitted ones still starting)."""

    sandboxes: int = 0
    cpu: float = 0.0
    memory_mb: int = 0

    def plus(self, resources: Resources) -> Usage:
        return Usage(
            self.sandboxes + 1, self.cpu + resources.cpu, self.memory_mb + resources.memory_mb
        )


@dataclass
class AdmissionRequest:
    spec: SandboxSpec  # the spec as the judges so far left it
    tenant: str | None  # None: the embedded CLI's own engine
    actor: str | None  # the API key id, or "cli"
    policy: EffectivePolicy
    template_resources: Resources  # the template's defaults
    runtimes: Mapping[str, Isolation]  # every known runtime and its isolation
    working: tuple[str, ...]  # runtimes that work here, fastest first
    snapshot_runtime: str | None  # the runtime of the snapshot it starts from, if any
    count_usage: Callable[[], Usage]  # the tenant's, before this request
    count_recent: Callable[[], int]  # the tenant's admitted creates in the last minute
    db: Database
    now: datetime
    notes: dict[str, str] = field(default_factory=dict)  # judges may leave notes for others

    @functools.cached_property
    def usage(self) -> Usage:
        return self.count_usage()

    @functools.cached_property
    def recent_creates(self) -> int:
        return self.count_recent()

    @property
    def strongest(self) -> Isolation:
        best = Isolation.CONTAINER
        for name in self.working:
            if self.runtimes[name].rank > best.rank:
                best = self.runtimes[name]
        return best


class Judge(Protocol):
    name: str

    def __call__(self, request: AdmissionRequest) -> Verdict: ...
