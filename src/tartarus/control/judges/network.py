"""Styx' part of admission: the network mode and egress rules a request may have.

The mode must be one the policy allows, and every egress rule must stay within the policy's
allowlist (a subnet of an allowed network, a name equal to or under an allowed wildcard):
a request can narrow what the policy grants, never widen it. Applying the rules is the
node's job (node/network*.py); this only decides what it will be asked to apply.
"""

from __future__ import annotations

from tartarus.control.judging import AdmissionRequest, Verdict
from tartarus.models import NetworkMode
from tartarus.models.policy import covers


class Styx:
    name = "Styx"

    def __call__(self, request: AdmissionRequest) -> Verdict:
        spec, policy = request.spec, request.policy
        modes = policy.network_modes
        if modes is not None and spec.network not in modes:
            allowed = ", ".join(sorted(m.value for m in modes)) or "none at all"
            return Verdict.reject(f"network mode {spec.network.value!r} is not allowed ({allowed})")
        if policy.egress is not None and spec.network == NetworkMode.OPEN:
            return Verdict.reject("network 'open' is not allowed: the policy has an allowlist")
        if policy.egress is not None:
            outside = [rule for rule in spec.egress if not covers(policy.egress, rule)]
            if outside:
                return Verdict.reject(
                    "egress outside the policy's allowlist: " + ", ".join(outside)
                )
        return Verdict.accept()
