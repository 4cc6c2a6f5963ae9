"""Minos: a tenant's quota over its live sandboxes (count, total CPU, total memory).

Usage counts every sandbox of the tenant that has not ended (pending to hibernated) plus the
ones admitted but still starting, so two concurrent creates cannot both take the last slot;
in the moment between a sandbox's row being written and its create returning it counts
twice, which can refuse a request at the limit a few ms early but never lets one through.
"""

from __future__ import annotations

from tartarus.control.judging import AdmissionRequest, Verdict


class Minos:
    name = "Minos"

    def __call__(self, request: AdmissionRequest) -> Verdict:
        quotas = request.policy.quotas
        if quotas.max_sandboxes is None and quotas.max_cpu is None and quotas.max_memory_mb is None:
            return Verdict.accept()  # no quota: the tenant's usage is not even counted
        used = request.usage
        resources = request.spec.resources or request.template_resources
        who = f"tenant {request.tenant}" if request.tenant else "this engine"
        if quotas.max_sandboxes is not None and used.sandboxes + 1 > quotas.max_sandboxes:
            return Verdict.reject(
                f"{who} has {used.sandboxes} live sandboxes, the quota is"
                f" {quotas.max_sandboxes} (kill one first)"
            )
        if quotas.max_cpu is not None and used.cpu + resources.cpu > quotas.max_cpu:
            return Verdict.reject(
                f"{who} uses {used.cpu:g} CPUs, {resources.cpu:g} more would exceed the"
                f" quota of {quotas.max_cpu:g}"
            )
        memory = quotas.max_memory_mb
        if memory is not None and used.memory_mb + resources.memory_mb > memory:
            return Verdict.reject(
                f"{who} uses {used.memory_mb} MiB, {resources.memory_mb} MiB more would exceed"
                f" the quota of {memory} MiB"
            )
        return Verdict.accept()
