"""Rhadamanthus: template, runtime, isolation, resources and timeout against the policy.

- the template and an explicitly named runtime must be allowed; a named runtime weaker than
  the policy's minimum isolation is refused (asking for crun under "gvisor at least" is a
  contradiction the caller should hear about, not a silent upgrade);
- otherwise (`runtime` unset or "auto") the spec gets the minimum isolation and, if the
  policy lists runtimes, the fastest allowed one that works and is strong enough;
- resources: a value equal to the template's default counts as not asked for and becomes
  the policy's default, then every value not asked for is lowered to the cap; a value the
  caller asked for above the cap is refused;
- the timeout must stay within `max_timeout` (the default one is lowered to it, as a
  resource default is); the policy's Erinyes budgets are stamped on.
"""

from __future__ import annotations

from typing import Any

from tartarus.control.judging import AdmissionRequest, Verdict
from tartarus.models import Isolation, Resources, SandboxSpec
from tartarus.runtimes.registry import AUTO

FIELDS = ("cpu", "memory_mb", "pids", "disk_mb")
DEFAULT_TIMEOUT = SandboxSpec.model_fields["timeout"].default


class Rhadamanthus:
    name = "Rhadamanthus"

    def __call__(self, request: AdmissionRequest) -> Verdict:
        spec, policy = request.spec, request.policy
        where = ", ".join(policy.sources)
        if policy.allowed_templates is not None and spec.template not in policy.allowed_templates:
            return Verdict.reject(f"template {spec.template!r} is not allowed ({where})")
        update: dict[str, Any] = {}
        runtime = _runtime(request, update)
        if isinstance(runtime, Verdict):
            return runtime
        resources = _resources(request)
        if isinstance(resources, Verdict):
            return resources
        update["resources"] = resources
        if policy.max_timeout is not None and spec.timeout == DEFAULT_TIMEOUT:
            update["timeout"] = min(spec.timeout, policy.max_timeout)  # not asked for
        elif policy.max_timeout is not None and spec.timeout > policy.max_timeout:
            return Verdict.reject(
                f"timeout {spec.timeout:g} s exceeds the policy's maximum of"
                f" {policy.max_timeout:g} s"
            )
        if policy.enforcement is not None:
            update["enforcement"] = policy.enforcement
        return Verdict.accept(spec.model_copy(update=update))


def _runtime(request: AdmissionRequest, update: dict[str, Any]) -> Verdict | None:
    spec, policy = request.spec, request.policy
    required = _stronger(spec.isolation, policy.min_isolation)
    allowed = policy.allowed_runtimes
    requested = None if spec.runtime in (None, AUTO) else spec.runtime
    if requested is not None:
        if allowed is not None and requested not in allowed:
            return Verdict.reject(
                f"runtime {requested!r} is not allowed (allowed: {', '.join(sorted(allowed))})"
            )
        level = request.runtimes.get(requested)
        if level is not None and required is not None and level.rank < required.rank:
            return Verdict.reject(
                f"runtime {requested!r} gives {level.value} isolation, the policy requires"
                f" {required.value} or stronger"
            )
    else:
        current = request.snapshot_runtime
        keep = current is not None and (allowed is None or current in allowed)
        if allowed is not None and not keep:
            choice = _fastest(request, allowed, required)
            if choice is None:
                return Verdict.reject(
                    "no allowed runtime works here with the required isolation"
                    f" (allowed: {', '.join(sorted(allowed))})"
                )
            update["runtime"] = choice
    if required is not None:
        update["isolation"] = required
    return None


def _fastest(
    request: AdmissionRequest, allowed: frozenset[str], required: Isolation | None
) -> str | None:
    for name in request.working:
        strong = required is None or request.runtimes[name].rank >= required.rank
        if name in allowed and strong:
            return name
    return None


def _stronger(a: Isolation | None, b: Isolation | None) -> Isolation | None:
    if a is None or b is None:
        return a or b
    return a if a.rank >= b.rank else b


def _resources(request: AdmissionRequest) -> Resources | Verdict:
    spec, policy = request.spec, request.policy
    template = request.template_resources
    asked = spec.resources or template
    caps, defaults = policy.max_resources, policy.default_resources
    values: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(asked, name)
        cap = getattr(caps, name)
        if value == getattr(template, name):  # not asked for: the policy's default, capped
            default = getattr(defaults, name)
            value = value if default is None else default
            if cap is not None and value > cap:
                value = cap
        elif cap is not None and value > cap:
            return Verdict.reject(
                f"{name} {value:g} exceeds the policy's cap of {cap:g}"
                f" ({', '.join(policy.sources)})"
            )
        values[name] = value
    return Resources(**values)
