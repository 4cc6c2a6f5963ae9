"""What Erinyes watches in a running sandbox, and what it does when a limit is crossed.

Hard limits (memory, pids, CPU share, writable layer size) are the kernel's job, set from
`Resources`. These are usage budgets over a sandbox's life that no cgroup expresses directly:
CPU time consumed, memory above a soft mark, bytes written to the layer, bytes of output,
bytes sent and received. Admission copies them from the policy into the spec, so the node
enforces what was decided at admission without reading policies itself.
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field


class EnforcementAction(enum.StrEnum):
    THROTTLE = "throttle"  # lower the CPU share (or stop the output) and keep it running
    KILL = "kill"
    HIBERNATE = "hibernate"  # where the runtime can checkpoint; else kill


class Enforcement(BaseModel):
    """Budgets per sandbox; None means unwatched. A violation ends (or throttles) the sandbox
    with a reason like `killed: memory` or `killed: output-limit`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_seconds: float | None = Field(None, gt=0, description="CPU time over the whole life")
    memory_mb: int | None = Field(None, ge=1, description="soft memory mark (below the hard)")
    disk_mb: int | None = Field(None, ge=1, description="bytes in the writable layer")
    output_bytes: int | None = Field(None, ge=1, description="stdout+stderr, all processes")
    network_bytes: int | None = Field(None, ge=1, description="sent plus received")
    action: EnforcementAction = EnforcementAction.KILL
