"""The SDK's one exception tree. It is separate from the engine's `tartarus.errors`: the SDK
only speaks HTTP, so every failure (an error answer, an `error` event in a stream, a broken
connection) becomes one of these, with the server's one-line message as `str(err)`.

TartarusError                 .status_code (None if no answer), .type (the API's error type)
├── InvalidRequestError       400 invalid_request, 413 payload_too_large, 422; no server URL
├── AuthenticationError       401: missing, unknown or revoked key; no API key configured
├── PermissionDeniedError     403: the key's role may not do this
├── NotFoundError             404: no such sandbox/file/key for this tenant
├── ConflictError             409: the sandbox's state does not allow it
├── RateLimitError            429
├── TimeoutError              408, 504, and client-side timeouts
└── ServerError               other 5xx, and connection failures (no answer at all)
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConflictError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "TartarusError",
    "TimeoutError",
]


class TartarusError(Exception):
    """Base class; `str(err)` is the server's message (one readable line)."""

    def __init__(
        self, message: str, *, status_code: int | None = None, type: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_code={self.status_code!r},"
            f" type={self.type!r})"
        )


class InvalidRequestError(TartarusError):
    pass


class AuthenticationError(TartarusError):
    pass


class PermissionDeniedError(TartarusError):
    pass


class NotFoundError(TartarusError):
    pass


class ConflictError(TartarusError):
    pass


class RateLimitError(TartarusError):
    pass


class TimeoutError(TartarusError):
    pass


class ServerError(TartarusError):
    pass


_BY_STATUS: dict[int, type[TartarusError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: TimeoutError,
    409: ConflictError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitError,
    504: TimeoutError,
}

_BY_TYPE: dict[str, type[TartarusError]] = {
    "invalid_request": InvalidRequestError,
    "payload_too_large": InvalidRequestError,
    "authentication": AuthenticationError,
    "permission_denied": PermissionDeniedError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "rate_limit": RateLimitError,
    "timeout": TimeoutError,
    "server_error": ServerError,
}


def for_status(status_code: int) -> type[TartarusError]:
    """The class for an HTTP error status; unknown 4xx fall back to InvalidRequestError."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    return ServerError if status_code >= 500 else InvalidRequestError


def for_type(error_type: str | None) -> type[TartarusError]:
    """The class for an `error` event inside a stream, which has a type but no status."""
    return _BY_TYPE.get(error_type or "", ServerError)
