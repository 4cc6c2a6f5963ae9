"""Tartarus: isolated sandboxes for untrusted code.

`from tartarus import Sandbox` works, but the SDK (httpx, pydantic) is imported only on first
use: the CLI imports `tartarus.*` on every command and must stay fast. `tartarus.TartarusError`
is the SDK's error base; the engine's own tree is `tartarus.errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tartarus.sdk import (
        Admin,
        AsyncAdmin,
        AsyncSandbox,
        AuthenticationError,
        ConflictError,
        InvalidRequestError,
        NotFoundError,
        PermissionDeniedError,
        RateLimitError,
        Sandbox,
        ServerError,
        TartarusError,
        TimeoutError,
    )

__all__ = [
    "Admin",
    "AsyncAdmin",
    "AsyncSandbox",
    "AuthenticationError",
    "ConflictError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "Sandbox",
    "ServerError",
    "TartarusError",
    "TimeoutError",
    "__version__",
]
_SDK_NAMES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        from tartarus import sdk

        value = getattr(sdk, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'tartarus' has no attribute {name!r}")
