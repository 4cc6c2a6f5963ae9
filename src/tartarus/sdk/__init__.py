"""The Tartarus SDK: sandboxes over the HTTP API (`docs/api.md`), blocking or asyncio.

    from tartarus import Sandbox
    with Sandbox.create(template="python") as sb:
        print(sb.commands.run("echo hi").stdout)

Configure with `url=`/`api_key=` or `TARTARUS_URL`/`TARTARUS_API_KEY`. Names load lazily, so
`tartarus.sdk.models` and `.errors` stay cheap for the CLI's embedded mode (no httpx import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tartarus.sdk.admin import Admin, AsyncAdmin
    from tartarus.sdk.async_sandbox import AsyncCommandHandle, AsyncSandbox
    from tartarus.sdk.errors import (
        AuthenticationError,
        ConflictError,
        InvalidRequestError,
        NotFoundError,
        PermissionDeniedError,
        RateLimitError,
        ServerError,
        TartarusError,
        TimeoutError,
    )
    from tartarus.sdk.models import (
        ApiKey,
        CommandResult,
        Execution,
        ExecutionError,
        FileEntry,
        LogEvent,
        SandboxEvent,
        SandboxInfo,
        SandboxResources,
        SnapshotInfo,
        Tenant,
    )
    from tartarus.sdk.sandbox import CommandHandle, Sandbox

__all__ = [
    "Admin",
    "ApiKey",
    "AsyncAdmin",
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AuthenticationError",
    "CommandHandle",
    "CommandResult",
    "ConflictError",
    "Execution",
    "ExecutionError",
    "FileEntry",
    "InvalidRequestError",
    "LogEvent",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "Sandbox",
    "SandboxEvent",
    "SandboxInfo",
    "SandboxResources",
    "ServerError",
    "SnapshotInfo",
    "TartarusError",
    "Tenant",
    "TimeoutError",
]

_MODULES = {
    "Admin": "admin",
    "AsyncAdmin": "admin",
    "AsyncCommandHandle": "async_sandbox",
    "AsyncSandbox": "async_sandbox",
    "CommandHandle": "sandbox",
    "ExecutionError": "models",
    "Sandbox": "sandbox",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'tartarus.sdk' has no attribute {name!r}")
    default = "models" if name[0].isupper() and not name.endswith("Error") else "errors"
    module = importlib.import_module(f"tartarus.sdk.{_MODULES.get(name, default)}")
    value = getattr(module, name)
    globals()[name] = value
    return value
