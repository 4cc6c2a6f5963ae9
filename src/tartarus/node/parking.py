"""Moving the guest agent off the host's listening socket across a CRIU checkpoint (runc).

CRIU saves the sockets of the container's own network namespace only. The agent's listening
socket (fd 3) was made by the engine in the host's, so `runc checkpoint` fails on it ("Unix
socket ... not found"). Before the checkpoint the agent is asked to `park`: it serves on an
abstract socket of its own namespace instead, which CRIU saves and restores like any other.
After the restore the engine reaches that socket from inside the namespace (a socket created
there, `setns` around one syscall) and hands the agent a fresh host listening socket
(`adopt_listener`, SCM_RIGHTS): from then on all is as before, re-adoption by a later engine
included. gVisor needs none of this: runsc saves the agent's socket with the sentry.
"""

from __future__ import annotations

import array
import asyncio
import ctypes
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

from tartarus.errors import AgentError
from tartarus.guest.protocol import encode_frame
from tartarus.node.agent_client import AgentClient, _Connection

if TYPE_CHECKING:
    from tartarus.node.live import LiveSandbox

CLONE_NEWNET = 0x40000000
CALL_S = 5.0

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(net): {os.strerror(err)}")


def socket_in_netns(pid: int) -> socket.socket:
    """An AF_UNIX socket of process `pid`'s network namespace (abstract names are per
    namespace). Only this thread switches, and only for the socket() call."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


async def park(live: LiveSandbox) -> str:
    """Have the agent serve on an abstract socket of its namespace; returns its name once
    nothing of the host's is left open in the agent."""
    name = f"tartarus-{secrets.token_hex(12)}"
    client = AgentClient(str(live.socket_path))
    conn = await asyncio.wait_for(client._request({"op": "park", "name": name}), CALL_S)
    try:
        header, _ = await asyncio.wait_for(conn.recv(), CALL_S)
        client._expect(header, "ok")
        await asyncio.wait_for(conn.reader.read(), CALL_S)  # EOF: the agent closed its end
    finally:
        await conn.close()
    await _call(live, name, {"op": "ping"}, "pong")  # answered: the old listener is closed
    return name


async def adopt(live: LiveSandbox, name: str, listener: socket.socket) -> None:
    """Hand the parked agent `listener` (bound at `live.socket_path`) to serve on."""
    await _call(live, name, {"op": "adopt_listener"}, "ok", fd=listener.fileno())


async def _call(
    live: LiveSandbox, name: str, request: dict[str, Any], reply: str, fd: int | None = None
) -> None:
    if live.init_pid is None:
        raise AgentError(f"sandbox {live.sandbox.id} has no init process to reach")
    sock = socket_in_netns(live.init_pid)
    try:
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, "\0" + name), CALL_S)
        await loop.sock_sendall(sock, encode_frame(request))
        if fd is not None:  # one byte carrying the descriptor; the buffer is empty: no wait
            sock.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        reader, writer = await asyncio.open_unix_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    conn = _Connection(reader, writer)
    try:
        header, _ = await asyncio.wait_for(conn.recv(), CALL_S)
        AgentClient._expect(header, reply)
    except TimeoutError:
        raise AgentError(f"the parked agent of {live.sandbox.id} did not answer") from None
    finally:
        await conn.close()
