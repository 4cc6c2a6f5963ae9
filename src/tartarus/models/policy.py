"""Themis' policies, and how several of them combine into the one a request is judged by.

A policy is scoped to a tenant (or "*") and a template (or "*"). A request matches every
policy whose scope covers it (global, per tenant, per template, tenant+template), and the
effective policy is the MOST RESTRICTIVE of each field over all of them — never "the most
specific wins": a tenant's policy can tighten the global one, not loosen it, so an operator
can reason about one policy at a time. Per field:

- sets of what is allowed (templates, runtimes, network modes): the intersection (unset = any)
- limits (caps, defaults, timeout, quotas, rate, Erinyes budgets): the smallest that is set
- min_isolation: the strongest; untrusted: any; allow_hibernate/snapshot: all
- deny_labels: the union; Erinyes' action: the harshest (kill > hibernate > throttle)
- egress allowlists: the rules of either that the other also covers (`covers` below), so a
  request's egress must stay within every matching policy's allowlist
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tartarus.models.enforcement import Enforcement, EnforcementAction
from tartarus.models.resources import Isolation, NetworkMode

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ANY = "*"
# runtime names accepted where an isolation level is expected ("untrusted tenants run on
# gvisor"); tests check this agrees with each runtime's declared capabilities
RUNTIME_ISOLATION: dict[str, Isolation] = {
    "crun": Isolation.CONTAINER,
    "runc": Isolation.CONTAINER,
    "gvisor": Isolation.USER_KERNEL,
    "microvm": Isolation.VM,
}
T = TypeVar("T")
N = TypeVar("N", int, float)
_SEVERITY = [EnforcementAction.THROTTLE, EnforcementAction.HIBERNATE, EnforcementAction.KILL]


class ResourceLimits(BaseModel):
    """Per-sandbox values, each optional: used both as caps and as defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float | None = Field(None, gt=0, le=256)
    memory_mb: int | None = Field(None, ge=16)
    pids: int | None = Field(None, ge=8)
    disk_mb: int | None = Field(None, ge=1)


class Quotas(BaseModel):
    """Per tenant, over its live sandboxes (Minos)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_sandboxes: int | None = Field(None, ge=0, description="live at the same time")
    max_cpu: float | None = Field(None, ge=0, description="sum of cores of live sandboxes")
    max_memory_mb: int | None = Field(None, ge=0, description="sum of memory of live sandboxes")


class NetworkRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    modes: tuple[NetworkMode, ...] | None = None  # None: any mode
    egress: tuple[str, ...] | None = None  # None: any destination; a request must stay within

    @field_validator("egress")
    @classmethod
    def _egress(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            for rule in v:
                check_rule(rule)
        return v


class Policy(BaseModel):
    """One named, versioned policy. Unset fields constrain nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    tenant: str = ANY
    template: str = ANY
    version: int = Field(0, ge=0, description="assigned by the store: 1, 2, ... per apply")
    description: str = ""
    allowed_templates: tuple[str, ...] | None = None
    allowed_runtimes: tuple[str, ...] | None = None
    min_isolation: Isolation | None = None
    max_resources: ResourceLimits = ResourceLimits()
    default_resources: ResourceLimits = ResourceLimits()
    max_timeout: float | None = Field(None, gt=0)
    quotas: Quotas = Quotas()
    network: NetworkRules = NetworkRules()
    allow_hibernate: bool = True
    allow_snapshot: bool = True
    untrusted: bool = False  # quarantine everything it covers (Typhon)
    enforcement: Enforcement | None = None  # stamped on admitted specs for Erinyes
    rate_limit: int | None = Field(None, ge=0, description="creates per minute per tenant")
    deny_labels: tuple[str, ...] = ()  # "key=value" refused; "key" refuses any value

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must be 1-64 of a-z 0-9 . _ - starting with a letter or digit")
        return v

    @field_validator("min_isolation", mode="before")
    @classmethod
    def _isolation(cls, v: Any) -> Any:
        if isinstance(v, str) and v in RUNTIME_ISOLATION:
            return RUNTIME_ISOLATION[v]
        return v

    @field_validator("deny_labels")
    @classmethod
    def _labels(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for label in v:
            if not label.partition("=")[0]:
                raise ValueError(f"deny label {label!r} has no key")
        return v

    def applies_to(self, tenant: str | None, template: str) -> bool:
        return self.tenant in (ANY, tenant) and self.template in (ANY, template)


class EffectivePolicy(BaseModel):
    """What a request is judged by: the combination of every policy that matched."""

    model_config = ConfigDict(frozen=True)

    sources: tuple[str, ...] = ()  # "name@version" of each policy combined
    allowed_templates: frozenset[str] | None = None
    allowed_runtimes: frozenset[str] | None = None
    min_isolation: Isolation | None = None
    max_resources: ResourceLimits = ResourceLimits()
    default_resources: ResourceLimits = ResourceLimits()
    max_timeout: float | None = None
    quotas: Quotas = Quotas()
    network_modes: frozenset[NetworkMode] | None = None
    egress: tuple[str, ...] | None = None
    allow_hibernate: bool = True
    allow_snapshot: bool = True
    untrusted: bool = False
    enforcement: Enforcement | None = None
    rate_limit: int | None = None
    deny_labels: frozenset[str] = frozenset()

    @property
    def untrusted_by(self) -> str:
        return ", ".join(self.sources) or "policy"


def combine(policies: Sequence[Policy]) -> EffectivePolicy:
    """The most restrictive of each field over `policies` (none: no restriction at all)."""
    eff = EffectivePolicy()
    for p in policies:
        eff = EffectivePolicy(
            sources=(*eff.sources, f"{p.name}@{p.version}"),
            allowed_templates=_meet_sets(eff.allowed_templates, p.allowed_templates),
            allowed_runtimes=_meet_sets(eff.allowed_runtimes, p.allowed_runtimes),
            min_isolation=_strongest(eff.min_isolation, p.min_isolation),
            max_resources=_meet_limits(eff.max_resources, p.max_resources),
            default_resources=_meet_limits(eff.default_resources, p.default_resources),
            max_timeout=_least(eff.max_timeout, p.max_timeout),
            quotas=Quotas(
                max_sandboxes=_least(eff.quotas.max_sandboxes, p.quotas.max_sandboxes),
                max_cpu=_least(eff.quotas.max_cpu, p.quotas.max_cpu),
                max_memory_mb=_least(eff.quotas.max_memory_mb, p.quotas.max_memory_mb),
            ),
            network_modes=_meet_sets(eff.network_modes, p.network.modes),
            egress=_meet_egress(eff.egress, p.network.egress),
            allow_hibernate=eff.allow_hibernate and p.allow_hibernate,
            allow_snapshot=eff.allow_snapshot and p.allow_snapshot,
            untrusted=eff.untrusted or p.untrusted,
            enforcement=_meet_enforcement(eff.enforcement, p.enforcement),
            rate_limit=_least(eff.rate_limit, p.rate_limit),
            deny_labels=eff.deny_labels | frozenset(p.deny_labels),
        )
    return eff


def _meet_sets(a: frozenset[T] | None, b: Iterable[T] | None) -> frozenset[T] | None:
    if b is None:
        return a
    return frozenset(b) if a is None else a & frozenset(b)


def _least(a: N | None, b: N | None) -> N | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _strongest(a: Isolation | None, b: Isolation | None) -> Isolation | None:
    if a is None:
        return b
    return a if b is None or a.rank >= b.rank else b


def _meet_limits(a: ResourceLimits, b: ResourceLimits) -> ResourceLimits:
    return ResourceLimits(
        cpu=_least(a.cpu, b.cpu),
        memory_mb=_least(a.memory_mb, b.memory_mb),
        pids=_least(a.pids, b.pids),
        disk_mb=_least(a.disk_mb, b.disk_mb),
    )


def _meet_enforcement(a: Enforcement | None, b: Enforcement | None) -> Enforcement | None:
    if a is None or b is None:
        return a or b
    return Enforcement(
        cpu_seconds=_least(a.cpu_seconds, b.cpu_seconds),
        memory_mb=_least(a.memory_mb, b.memory_mb),
        disk_mb=_least(a.disk_mb, b.disk_mb),
        output_bytes=_least(a.output_bytes, b.output_bytes),
        network_bytes=_least(a.network_bytes, b.network_bytes),
        action=max(a.action, b.action, key=_SEVERITY.index),
    )


def _meet_egress(a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if a is None or b is None:
        return a if b is None else b
    both = [r for r in dict.fromkeys((*a, *b)) if covers(a, r) and covers(b, r)]
    return tuple(both)


# -- egress rules -----------------------------------------------------------------------------

_DOMAIN_RE = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}$")


def check_rule(rule: str) -> None:
    """A CIDR or address, a domain name, or `*.domain`; ValueError otherwise."""
    try:
        ipaddress.ip_network(rule, strict=False)
        return
    except ValueError:
        pass
    if not _DOMAIN_RE.match(rule.lower()) or len(rule) > 253:
        raise ValueError(f"egress rule {rule!r} is neither a CIDR nor a domain name")


def covers(allowed: Iterable[str], rule: str) -> bool:
    """Whether `rule` reaches nothing that `allowed` does not: a network inside an allowed
    network, a name equal to an allowed one or under an allowed `*.` wildcard."""
    try:
        net = ipaddress.ip_network(rule, strict=False)
    except ValueError:
        net = None
    for a in allowed:
        if net is not None:
            try:
                other = ipaddress.ip_network(a, strict=False)
            except ValueError:
                continue
            if net.version == other.version and net.subnet_of(other):  # type: ignore[arg-type]
                return True
        elif _name_covers(a.lower(), rule.lower()):
            return True
    return False


def _name_covers(allowed: str, rule: str) -> bool:
    if allowed == rule:
        return True
    if allowed.startswith("*."):
        suffix = allowed[1:]  # ".github.com": a wildcard covers names below, not the apex
        return rule.endswith(suffix) and len(rule) > len(suffix)
    return False
