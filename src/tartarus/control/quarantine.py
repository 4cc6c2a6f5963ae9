"""Typhon's routing: what a quarantined request becomes.

Whatever judge quarantined it, the spec is forced, after the whole chain has run (so no
later judge can loosen it), onto the strongest isolation a working runtime gives here, the
`strict` seccomp profile, no network and no egress, and it is labelled: `spec.quarantine`
says why, and metadata `tartarus.quarantine` shows it to the owner in every listing. A
runtime the caller named is kept only if it is that strong; otherwise the quarantine wins
over the request (refusing would teach an attacker which commands are flagged).
"""

from __future__ import annotations

from collections.abc import Mapping

from tartarus.models import Isolation, NetworkMode, SandboxSpec
from tartarus.runtimes.seccomp_profiles import STRICT as STRICT_SECCOMP

LABEL = "tartarus.quarantine"


def force(
    spec: SandboxSpec, reason: str, strongest: Isolation, runtimes: Mapping[str, Isolation]
) -> SandboxSpec:
    runtime = spec.runtime
    if runtime is not None and runtimes.get(runtime, Isolation.CONTAINER).rank < strongest.rank:
        runtime = None
    return spec.model_copy(
        update={
            "runtime": runtime,
            "isolation": strongest,
            "seccomp": STRICT_SECCOMP,
            "network": NetworkMode.NONE,
            "egress": (),
            "quarantine": reason,
            "metadata": {**spec.metadata, LABEL: reason},
        }
    )
