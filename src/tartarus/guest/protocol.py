"""Framing for the guest agent protocol, shared by the agent (sync) and the host client (async).

Why a custom frame rather than JSON lines: bodies carry raw process output and file contents, so
a tiny length-prefixed header+body frame avoids base64 and escaping entirely. This module is
stdlib-only and runs on Python >= 3.9 because it is copied into arbitrary sandbox images.

Frame layout: ``>I`` header length H, ``>I`` body length B, H bytes of UTF-8 JSON object, B raw
bytes.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Mapping

TYPE_CHECKING = False  # not typing's: the agent does without importing typing (2 ms, 0.5 MiB)
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 1
HEADER_STRUCT = struct.Struct(">II")
PREFIX_SIZE = HEADER_STRUCT.size
MAX_HEADER = 1 << 20  # 1 MiB
MAX_BODY = 8 << 20  # 8 MiB
CHUNK_SIZE = 64 * 1024  # stdout/stderr/file chunks sent by the agent

if TYPE_CHECKING:  # `Header` and `Frame` in annotations only (they are strings here)
    Header = dict[str, Any]
    Frame = tuple[Header, bytes]


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


def encode_frame(header: Mapping[str, Any], body: bytes = b"") -> bytes:
    """Serialize one frame (prefix + header + body) into bytes."""
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(raw) > MAX_HEADER:
        raise ProtocolError(f"frame header too large ({len(raw)} bytes)")
    if len(body) > MAX_BODY:
        raise ProtocolError(f"frame body too large ({len(body)} bytes)")
    return HEADER_STRUCT.pack(len(raw), len(body)) + raw + bytes(body)


def decode_prefix(prefix: bytes) -> tuple[int, int]:
    """Return (header_len, body_len) from the 8-byte prefix, enforcing the size limits."""
    if len(prefix) != PREFIX_SIZE:
        raise ProtocolError("truncated frame prefix")
    hlen, blen = HEADER_STRUCT.unpack(prefix)
    if hlen > MAX_HEADER:
        raise ProtocolError(f"frame header too large ({hlen} bytes)")
    if blen > MAX_BODY:
        raise ProtocolError(f"frame body too large ({blen} bytes)")
    return hlen, blen


def decode_header(raw: bytes) -> dict[str, Any]:
    """Parse the JSON header; it must be an object."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    return header


def send_frame(sock: socket.socket, header: Mapping[str, Any], body: bytes = b"") -> None:
    """Send one frame on a blocking socket."""
    sock.sendall(encode_frame(header, body))


def _recv_exactly(sock: socket.socket, n: int, allow_eof: bool) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            if allow_eof and not buf:
                return None
            raise ProtocolError("connection closed in the middle of a frame")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> Frame | None:
    """Receive one frame from a blocking socket; None on a clean EOF between frames."""
    prefix = _recv_exactly(sock, PREFIX_SIZE, allow_eof=True)
    if prefix is None:
        return None
    hlen, blen = decode_prefix(prefix)
    data = _recv_exactly(sock, hlen + blen, allow_eof=False)
    assert data is not None
    return decode_header(data[:hlen]), data[hlen:]


class FrameDecoder:
    """Incremental decoder for non-blocking loops: feed bytes, get complete frames back."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= PREFIX_SIZE:
            hlen, blen = decode_prefix(bytes(self._buf[:PREFIX_SIZE]))
            end = PREFIX_SIZE + hlen + blen
            if len(self._buf) < end:
                break
            header = decode_header(bytes(self._buf[PREFIX_SIZE : PREFIX_SIZE + hlen]))
            frames.append((header, bytes(self._buf[PREFIX_SIZE + hlen : end])))
            del self._buf[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a complete frame."""
        return len(self._buf)
