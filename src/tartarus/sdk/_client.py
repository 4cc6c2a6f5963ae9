"""The HTTP layer, httpx style: `BaseClient` holds everything but IO (configuration, request
building, error mapping, SSE parsing), and `Client`/`AsyncClient` only send and read. The
operations themselves are data (`tartarus.sdk._api`): a `Request` plus a decode function,
so the sync and async SDKs run the very same descriptions.

Configuration: `url=`/`api_key=` arguments, else `TARTARUS_URL`/`TARTARUS_API_KEY`. A missing
URL raises `InvalidRequestError` and a missing key `AuthenticationError`, both before any
request is sent, with a message that names the environment variable.
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx2

from tartarus import __version__
from tartarus.sdk import errors
from tartarus.sdk._sse import ServerEvent, SSEDecoder

T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0  # seconds per request; streams wait for data without a read limit
CONNECT_TIMEOUT = 10.0
NO_READ_LIMIT = httpx2.Timeout(CONNECT_TIMEOUT, read=None)


@dataclass(frozen=True)
class Request:
    """One API request as data; `timeout` None means the client's default."""

    method: str
    path: str
    params: list[tuple[str, str]] = field(default_factory=list)
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: httpx2.Timeout | None = None


@dataclass(frozen=True)
class Call(Generic[T]):
    """A request and how to turn its successful answer into a value."""

    request: Request
    decode: Callable[[httpx2.Response], T]


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context per process: building one (loading the CA bundle) costs ~20 ms, and
    every Sandbox.create makes a client."""
    return httpx2.create_ssl_context()


class BaseClient:
    def __init__(self, url: str | None, api_key: str | None, timeout: float) -> None:
        url = url or os.environ.get("TARTARUS_URL")
        if not url:
            raise errors.InvalidRequestError(
                "no Tartarus server URL: pass url= or set TARTARUS_URL"
            )
        api_key = api_key or os.environ.get("TARTARUS_API_KEY")
        if not api_key:
            raise errors.AuthenticationError(
                "no Tartarus API key: pass api_key= or set TARTARUS_API_KEY"
            )
        self.url = url.rstrip("/")
        self.api_key = api_key
        self._timeout = httpx2.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT))
        self._verify = _ssl_context()

    def _build(self, request: Request) -> httpx2.Request:
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "User-Agent": f"tartarus-sdk/{__version__}",
            **request.headers,
        }
        timeout = request.timeout or self._timeout
        return httpx2.Request(
            request.method,
            self.url + request.path,
            params=tuple(request.params) or None,
            json=request.json,
            content=request.content,
            headers=headers,
            extensions={"timeout": timeout.as_dict()},
        )

    @staticmethod
    def _check(response: httpx2.Response) -> None:
        """Raise the SDK error for an error answer (its body must have been read)."""
        if response.is_success:
            return
        status = response.status_code
        error_type: str | None = None
        try:
            error = response.json()["error"]
            message, error_type = str(error["message"]), error.get("type")
        except (ValueError, KeyError, TypeError):
            message = response.text.strip()[:300] or f"HTTP {status} {response.reason_phrase}"
        raise errors.for_status(status)(message, status_code=status, type=error_type)

    def _transport_error(self, exc: Exception) -> errors.TartarusError:
        if isinstance(exc, httpx2.TimeoutException):
            return errors.TimeoutError(f"no answer from {self.url} in time ({exc or 'timeout'})")
        return errors.ServerError(f"cannot talk to {self.url}: {exc or type(exc).__name__}")

    @staticmethod
    def _event(decoder: SSEDecoder, line: str) -> ServerEvent | None:
        """Parse one SSE line; an `error` event becomes the matching exception."""
        event = decoder.feed(line)
        if event is not None and event.event == "error":
            data = event.json() or {}
            error_type = data.get("type")
            message = data.get("message") or "the stream failed"
            raise errors.for_type(error_type)(message, type=error_type)
        return event


_STREAM_ERRORS = (httpx2.HTTPError, httpx2.StreamError)


class Client(BaseClient):
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout)
        self._http = httpx2.Client(transport=transport, timeout=self._timeout, verify=self._verify)

    def call(self, call: Call[T]) -> T:
        try:
            response = self._http.send(self._build(call.request))
        except httpx2.HTTPError as exc:
            raise self._transport_error(exc) from exc
        self._check(response)
        return call.decode(response)

    def stream(self, request: Request) -> EventStream:
        try:
            response = self._http.send(self._build(request), stream=True)
            if response.is_error:
                try:
                    response.read()
                finally:
                    response.close()
        except httpx2.HTTPError as exc:
            raise self._transport_error(exc) from exc
        self._check(response)
        return EventStream(self, response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventStream:
    """The events of one SSE answer. `abort()` may be called from another thread: it shuts
    the socket down, which wakes a blocked read, and the iteration then simply ends."""

    def __init__(self, client: Client, response: httpx2.Response) -> None:
        self._client = client
        self._response = response
        self.aborted = False

    def __iter__(self) -> Iterator[ServerEvent]:
        decoder = SSEDecoder()
        try:
            for line in self._response.iter_lines():
                event = self._client._event(decoder, line)
                if event is not None:
                    yield event
        except _STREAM_ERRORS as exc:
            if not self.aborted:
                raise self._client._transport_error(exc) from exc
        finally:
            self._response.close()

    def abort(self) -> None:
        self.aborted = True
        network = self._response.extensions.get("network_stream")
        sock = network.get_extra_info("socket") if network is not None else None
        if isinstance(sock, socket.socket):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        else:
            self._response.close()


class AsyncClient(BaseClient):
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout)
        self._http = httpx2.AsyncClient(
            transport=transport, timeout=self._timeout, verify=self._verify
        )

    async def call(self, call: Call[T]) -> T:
        try:
            response = await self._http.send(self._build(call.request))
        except httpx2.HTTPError as exc:
            raise self._transport_error(exc) from exc
        self._check(response)
        return call.decode(response)

    async def stream(self, request: Request) -> AsyncEventStream:
        try:
            response = await self._http.send(self._build(request), stream=True)
            if response.is_error:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except httpx2.HTTPError as exc:
            raise self._transport_error(exc) from exc
        self._check(response)
        return AsyncEventStream(self, response)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncEventStream:
    """The events of one SSE answer; cancelling the consuming task closes the connection."""

    def __init__(self, client: AsyncClient, response: httpx2.Response) -> None:
        self._client = client
        self._response = response

    async def __aiter__(self) -> AsyncIterator[ServerEvent]:
        decoder = SSEDecoder()
        try:
            async for line in self._response.aiter_lines():
                event = self._client._event(decoder, line)
                if event is not None:
                    yield event
        except _STREAM_ERRORS as exc:
            raise self._client._transport_error(exc) from exc
        finally:
            await self._response.aclose()
