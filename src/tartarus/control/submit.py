"""The one way a caller's create reaches the engine: admission first, then the engine.

The API route and the embedded CLI both call `create` here, so no path creates a sandbox
the judges did not see. Warm pool refills call the engine directly: they are the system's
own work, and a pooled sandbox is handed out only to an admitted spec it matches
(node/pools.py). The decision is recorded after the create, with the sandbox's id when
there is one, and the admitted resources stay reserved against the quota until then.
"""

from __future__ import annotations

from tartarus.control.admission import for_engine
from tartarus.models import Sandbox, SandboxSpec
from tartarus.node.engine import Engine, ProgressCallback
from tartarus.node.live import MainIO

CLI_ACTOR = "cli"  # the audit log's actor for the embedded CLI's creates (no tenant, no key)


async def create(
    engine: Engine,
    spec: SandboxSpec,
    *,
    tenant: str | None,
    actor: str | None,
    received: float | None = None,
    io: MainIO | None = None,
    progress: ProgressCallback | None = None,
) -> Sandbox:
    admission = for_engine(engine)
    admitted = await admission.admit(spec, tenant=tenant, actor=actor)
    try:
        sandbox = await engine.create(
            admitted.spec, tenant=tenant, io=io, progress=progress, received=received
        )
    except BaseException as exc:
        try:
            admission.record(admitted, None, error=str(exc) or repr(exc))
        finally:
            admission.release(admitted)
        raise
    try:
        admission.record(admitted, sandbox)
    finally:
        admission.release(admitted)
    return sandbox
