"""Every API operation as data (a `Call` or a stream `Request`) plus the shared decoding of
answers and stream events, so `Sandbox` and `AsyncSandbox` contain no protocol logic."""

from __future__ import annotations

import base64
import codecs
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx2

from tartarus.sdk import errors
from tartarus.sdk._client import NO_READ_LIMIT, Call, Request
from tartarus.sdk._sse import ServerEvent
from tartarus.sdk.models import (
    ApiKey,
    CommandResult,
    Execution,
    FileEntry,
    LogEvent,
    Pool,
    SandboxInfo,
    SnapshotInfo,
    Tenant,
)

# Creating may build the template's image first; that can take minutes on a cold server.
CREATE_TIMEOUT = httpx2.Timeout(10.0, read=900.0)

TextCallback = Callable[[str], object]
RawCallback = Callable[[str, bytes], object]


def _sandbox(sandbox_id: str, suffix: str = "") -> str:
    return f"/v1/sandboxes/{quote(sandbox_id, safe='')}{suffix}"


def _info(response: httpx2.Response) -> SandboxInfo:
    return SandboxInfo.model_validate(response.json())


def _nothing(response: httpx2.Response) -> None:
    return None


def argv(cmd: str | Sequence[str]) -> list[str]:
    """A string runs through `sh -c`, a list as it is."""
    return ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)


# -- sandboxes ------------------------------------------------------------------------------


def create_sandbox(
    *,
    template: str | None,
    timeout: float,
    cpu: float | None = None,
    memory_mb: int | None = None,
    pids: int | None = None,
    disk_mb: int | None = None,
    env: Mapping[str, str] | None = None,
    metadata: Mapping[str, str] | None = None,
    runtime: str | None = None,
    command: str | Sequence[str] | None = None,
    workdir: str | None = None,
    snapshot: str | None = None,
    seccomp: str | None = None,
    network: str | None = None,
    egress: Sequence[str] | None = None,
) -> Call[SandboxInfo]:
    body: dict[str, Any] = {
        "command": argv(command) if command else [],
        "env": dict(env or {}),
        "workdir": workdir,
        "cpu": cpu,
        "memory_mb": memory_mb,
        "pids": pids,
        "disk_mb": disk_mb,
        "timeout": timeout,
        "runtime": runtime,
        "metadata": dict(metadata or {}),
    }
    if template is not None or snapshot is None:  # a snapshot's own template by default
        body["template"] = template or "python"
    if snapshot is not None:
        body["snapshot"] = snapshot
    if seccomp is not None:
        body["seccomp"] = seccomp
    if network is not None:
        body["network"] = network
    if egress:
        body["egress"] = list(egress)
    return Call(Request("POST", "/v1/sandboxes", json=body, timeout=CREATE_TIMEOUT), _info)


def get_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    return Call(Request("GET", _sandbox(sandbox_id)), _info)


def kill_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    return Call(Request("DELETE", _sandbox(sandbox_id)), _info)


def set_network(sandbox_id: str, mode: str, egress: Sequence[str] = ()) -> Call[SandboxInfo]:
    body = {"mode": mode, "egress": list(egress)}
    return Call(Request("PUT", _sandbox(sandbox_id, "/network"), json=body), _info)


def set_timeout(sandbox_id: str, seconds: float) -> Call[SandboxInfo]:
    return Call(Request("POST", _sandbox(sandbox_id, "/timeout"), json={"timeout": seconds}), _info)


@dataclass(frozen=True)
class Page:
    items: list[SandboxInfo]
    next_cursor: str | None


def _page(response: httpx2.Response) -> Page:
    data = response.json()
    items = [SandboxInfo.model_validate(item) for item in data["items"]]
    return Page(items, data.get("next_cursor"))


def list_sandboxes(
    *,
    state: str | Sequence[str] | None = None,
    metadata: Mapping[str, str] | None = None,
    cursor: str | None = None,
    limit: int | None = None,
) -> Call[Page]:
    params: list[tuple[str, str]] = []
    states = [state] if isinstance(state, str) else list(state or [])
    params += [("state", s) for s in states]
    params += [("metadata", f"{k}:{v}") for k, v in (metadata or {}).items()]
    if limit is not None:
        params.append(("limit", str(limit)))
    if cursor:
        params.append(("cursor", cursor))
    return Call(Request("GET", "/v1/sandboxes", params=params), _page)


# -- code and files -------------------------------------------------------------------------


def run_code(
    sandbox_id: str, code: str, context: str | None, timeout: float | None
) -> Call[Execution]:
    body = {"code": code, "context": context, "timeout": timeout}
    http_timeout = NO_READ_LIMIT if timeout is None else httpx2.Timeout(10.0, read=timeout + 30)
    return Call(
        Request("POST", _sandbox(sandbox_id, "/code"), json=body, timeout=http_timeout),
        lambda r: Execution.model_validate(r.json()),
    )


def write_file(sandbox_id: str, path: str, data: bytes | str) -> Call[None]:
    content = data.encode() if isinstance(data, str) else bytes(data)
    return Call(
        Request(
            "PUT",
            _sandbox(sandbox_id, "/files"),
            params=[("path", path)],
            content=content,
            headers={"Content-Type": "application/octet-stream"},
        ),
        _nothing,
    )


def read_file(sandbox_id: str, path: str) -> Call[bytes]:
    request = Request("GET", _sandbox(sandbox_id, "/files"), params=[("path", path)])
    return Call(request, lambda r: r.content)


def list_files(sandbox_id: str, path: str) -> Call[list[FileEntry]]:
    return Call(
        Request("GET", _sandbox(sandbox_id, "/files/list"), params=[("path", path)]),
        lambda r: [FileEntry.model_validate(e) for e in r.json()["entries"]],
    )


def remove_file(sandbox_id: str, path: str, recursive: bool) -> Call[None]:
    params = [("path", path), ("recursive", "true" if recursive else "false")]
    return Call(Request("DELETE", _sandbox(sandbox_id, "/files"), params=params), _nothing)


# -- streams --------------------------------------------------------------------------------


def exec_request(
    sandbox_id: str,
    cmd: str | Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    stdin: bytes | str | None = None,
) -> Request:
    if isinstance(stdin, str):
        stdin = stdin.encode()
    body = {
        "command": argv(cmd),
        "env": dict(env or {}),
        "cwd": cwd,
        "timeout": timeout,
        "stdin": base64.b64encode(stdin).decode() if stdin is not None else None,
    }
    return Request("POST", _sandbox(sandbox_id, "/exec"), json=body, timeout=NO_READ_LIMIT)


def kill_exec(sandbox_id: str, exec_id: str) -> Call[None]:
    """Kill a running exec at once (a dropped stream would leave it a grace period)."""
    return Call(Request("DELETE", _sandbox(sandbox_id, f"/exec/{exec_id}")), _nothing)


def logs_request(sandbox_id: str, *, follow: bool = False, after: int | None = None) -> Request:
    headers = {"Last-Event-ID": str(after)} if after is not None else {}
    params = [("follow", "true" if follow else "false")]
    return Request(
        "GET", _sandbox(sandbox_id, "/logs"), params=params, headers=headers, timeout=NO_READ_LIMIT
    )


def _output(event: ServerEvent) -> bytes:
    return base64.b64decode((event.json() or {}).get("data") or "")


def log_event(event: ServerEvent) -> LogEvent | None:
    """A log chunk, or None for events that carry none (the caller stops at `end`)."""
    if event.event not in ("stdout", "stderr"):
        return None
    seq = int(event.id) if event.id and event.id.isdigit() else None
    return LogEvent(stream=event.event, data=_output(event), id=seq)


class ExecCollector:
    """Consumes an exec stream's events: decodes output as UTF-8 (keeping characters split
    across chunks intact), hands chunks to callbacks and builds the `CommandResult`.

    `feed` returns what the callback returned, so the async SDK can await coroutines."""

    def __init__(
        self,
        on_stdout: TextCallback | None = None,
        on_stderr: TextCallback | None = None,
        *,
        on_output: RawCallback | None = None,
    ) -> None:
        self._callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        self._on_output = on_output
        self._decoders = {
            name: codecs.getincrementaldecoder("utf-8")(errors="replace")
            for name in ("stdout", "stderr")
        }
        self._text: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._exit: dict[str, Any] | None = None
        self.exec_id: str | None = None  # from the `started` event: what kill_exec needs

    def feed(self, event: ServerEvent) -> object:
        if event.event == "started":
            self.exec_id = (event.json() or {}).get("exec_id")
            return None
        if event.event == "exit":
            self._exit = event.json() or {}
            return None
        if event.event not in self._decoders:
            return None
        data = _output(event)
        if self._on_output is not None:
            self._on_output(event.event, data)
        text = self._decoders[event.event].decode(data)
        self._text[event.event].append(text)
        callback = self._callbacks[event.event]
        return callback(text) if callback is not None and text else None

    def result(self) -> CommandResult:
        if self._exit is None:
            raise errors.ServerError("the exec stream ended without an exit status")
        for name, decoder in self._decoders.items():
            self._text[name].append(decoder.decode(b"", final=True))
        return CommandResult(
            exit_code=self._exit.get("exit_code", -1),
            stdout="".join(self._text["stdout"]),
            stderr="".join(self._text["stderr"]),
            signal=self._exit.get("signal"),
            timed_out=bool(self._exit.get("timed_out")),
        )


# -- admin ----------------------------------------------------------------------------------


def create_tenant(name: str) -> Call[Tenant]:
    return Call(
        Request("POST", "/v1/tenants", json={"name": name}),
        lambda r: Tenant.model_validate(r.json()),
    )


def list_tenants() -> Call[list[Tenant]]:
    return Call(
        Request("GET", "/v1/tenants"),
        lambda r: [Tenant.model_validate(t) for t in r.json()["items"]],
    )


def create_key(tenant: str, role: str = "member", name: str | None = None) -> Call[ApiKey]:
    body = {"tenant": tenant, "role": role, "name": name}
    return Call(Request("POST", "/v1/keys", json=body), lambda r: ApiKey.model_validate(r.json()))


def list_keys(tenant: str | None = None) -> Call[list[ApiKey]]:
    params = [("tenant", tenant)] if tenant else []
    return Call(
        Request("GET", "/v1/keys", params=params),
        lambda r: [ApiKey.model_validate(k) for k in r.json()["items"]],
    )


def revoke_key(key_id: str) -> Call[ApiKey]:
    return Call(
        Request("DELETE", f"/v1/keys/{quote(key_id, safe='')}"),
        lambda r: ApiKey.model_validate(r.json()),
    )


# -- warm pools ------------------------------------------------------------------------------


def _pool_path(template: str) -> str:
    return f"/v1/pools/{quote(template, safe='')}"


def set_pool(template: str, min: int, max: int | None, runtime: str | None) -> Call[Pool]:
    body = {"min": min, "max": max, "runtime": runtime}
    return Call(
        Request("PUT", _pool_path(template), json=body), lambda r: Pool.model_validate(r.json())
    )


def list_pools() -> Call[list[Pool]]:
    return Call(
        Request("GET", "/v1/pools"), lambda r: [Pool.model_validate(p) for p in r.json()["items"]]
    )


def delete_pool(template: str) -> Call[None]:
    return Call(Request("DELETE", _pool_path(template)), lambda r: None)


# -- lifecycle: pause, resume, terminate ----------------------------------------------------


def pause_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    return Call(Request("POST", _sandbox(sandbox_id, "/pause")), _info)


def resume_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    return Call(Request("POST", _sandbox(sandbox_id, "/resume")), _info)


def terminate_sandbox(
    sandbox_id: str, grace: float | None = None, checkpoint: bool = False
) -> Call[SandboxInfo]:
    # the server answers once the sandbox has ended: up to the grace period (its default,
    # the template's or the server's, is unknown here), then the kill
    timeout = (
        NO_READ_LIMIT if grace is None or checkpoint else httpx2.Timeout(10.0, read=grace + 60)
    )
    body: dict[str, object] = {"grace": grace} if grace is not None else {}
    if checkpoint:
        body["checkpoint"] = True
    request = Request("POST", _sandbox(sandbox_id, "/terminate"), json=body, timeout=timeout)
    return Call(request, _info)


# -- hibernation (Hypnos) -------------------------------------------------------------------

# memory and layer to disk and back: seconds for a big sandbox, so more than the default
HIBERNATE_TIMEOUT = httpx2.Timeout(10.0, read=300.0)


def hibernate_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    request = Request("POST", _sandbox(sandbox_id, "/hibernate"), timeout=HIBERNATE_TIMEOUT)
    return Call(request, _info)


def wake_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    request = Request("POST", _sandbox(sandbox_id, "/wake"), timeout=HIBERNATE_TIMEOUT)
    return Call(request, _info)


# -- snapshots (Nyx) ------------------------------------------------------------------------

# the layer is copied while the sandbox is paused: seconds for a big one
SNAPSHOT_TIMEOUT = httpx2.Timeout(10.0, read=300.0)


def _snapshot(response: httpx2.Response) -> SnapshotInfo:
    return SnapshotInfo.model_validate(response.json())


def snapshot_sandbox(
    sandbox_id: str, name: str | None = None, memory: bool = False
) -> Call[SnapshotInfo]:
    body: dict[str, object] = {"name": name} if name is not None else {}
    if memory:
        body["memory"] = True
    request = Request(
        "POST", _sandbox(sandbox_id, "/snapshot"), json=body, timeout=SNAPSHOT_TIMEOUT
    )
    return Call(request, _snapshot)


def list_snapshots() -> Call[list[SnapshotInfo]]:
    return Call(
        Request("GET", "/v1/snapshots"),
        lambda r: [SnapshotInfo.model_validate(i) for i in r.json()["items"]],
    )


def delete_snapshot(snapshot: str) -> Call[SnapshotInfo]:
    return Call(Request("DELETE", f"/v1/snapshots/{quote(snapshot, safe='')}"), _snapshot)
