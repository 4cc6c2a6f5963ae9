"""Styx's DNS resolver: the only name service an `allowlist` or `open` sandbox can use.

The sandbox's /etc/resolv.conf names the host side of its veth, where the engine answers on
UDP port 53 (nftables drops DNS to anything else, and the host's other ports). A query for a
name the rules do not allow gets NXDOMAIN without ever leaving the engine, so a sandbox
cannot tunnel data out through names of its own choosing. An allowed `A` query is forwarded
to the upstream resolver (the host's first `nameserver`, or `TARTARUS_DNS_UPSTREAM`); the
addresses in the answer are added to the sandbox's nftables set (with their TTL) *before*
the answer is sent, so the connection that follows is already allowed. `AAAA` and every
other type get an empty answer: sandboxes have no IPv6 route. TCP DNS is not served; our
answers (A records only) fit in UDP.

One resolver (one socket) per sandbox, bound to its veth address: the address tells whose
query it is, and one sandbox cannot use another's resolver (its address is a host address,
dropped by that sandbox's input chain).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import structlog

from tartarus.node.egress import EgressRules

log = structlog.get_logger("tartarus.styx.dns")

UPSTREAM_TIMEOUT_S = 3.0
MAX_IN_FLIGHT = 64  # queries per sandbox being answered; more are dropped (a flood)
TYPE_A, TYPE_CNAME, CLASS_IN = 1, 5, 1
NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5

Answers = list[tuple[str, int]]  # (IPv4 address, TTL)
OnAnswer = Callable[[Answers], Awaitable[None]]


class DNSFormatError(ValueError):
    """A message we cannot parse: a query gets no answer, an upstream answer a SERVFAIL."""


def host_upstream(resolv_conf: Path = Path("/etc/resolv.conf")) -> tuple[str, int] | None:
    """The host's first IPv4 nameserver."""
    with contextlib.suppress(OSError):
        for line in resolv_conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                return parts[1], 53
    return None


def parse_upstream(value: str) -> tuple[str, int]:
    """`ip` or `ip:port`."""
    host, _, port = value.partition(":")
    return host, int(port or 53)


def _read_name(msg: bytes, offset: int) -> tuple[str, int]:
    """A (possibly compressed) name at `offset`; returns it and the offset after it."""
    labels: list[str] = []
    end: int | None = None
    for _ in range(128):  # pointer loops end here
        if offset >= len(msg):
            raise DNSFormatError("name runs past the message")
        length = msg[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(msg):
                raise DNSFormatError("truncated pointer")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | msg[offset + 1]
            continue
        if length & 0xC0:
            raise DNSFormatError("bad label type")
        offset += 1
        if length == 0:
            return ".".join(labels), end if end is not None else offset
        labels.append(msg[offset : offset + length].decode("ascii", "replace").lower())
        offset += length
    raise DNSFormatError("too many labels")


def parse_question(msg: bytes) -> tuple[int, int, str, int, int]:
    """(id, flags, name, qtype, end of the question) of a query with one question."""
    if len(msg) < 12:
        raise DNSFormatError("short header")
    qid, flags, qdcount = struct.unpack("!HHH", msg[:6])
    if qdcount != 1:
        raise DNSFormatError("not exactly one question")
    name, offset = _read_name(msg, 12)
    if offset + 4 > len(msg):
        raise DNSFormatError("truncated question")
    qtype, _qclass = struct.unpack("!HH", msg[offset : offset + 4])
    return qid, flags, name, qtype, offset + 4


def answers_of(msg: bytes) -> Answers:
    """The A records of a response (of any name: CNAME chains end in them)."""
    if len(msg) < 12:
        raise DNSFormatError("short header")
    qdcount, ancount = struct.unpack("!HH", msg[4:8])
    offset = 12
    for _ in range(qdcount):
        _, offset = _read_name(msg, offset)
        offset += 4
    out: Answers = []
    for _ in range(ancount):
        _, offset = _read_name(msg, offset)
        if offset + 10 > len(msg):
            raise DNSFormatError("truncated record")
        rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", msg[offset : offset + 10])
        offset += 10
        rdata = msg[offset : offset + rdlen]
        offset += rdlen
        if rtype == TYPE_A and rclass == CLASS_IN and len(rdata) == 4:
            out.append((".".join(str(b) for b in rdata), ttl))
    return out


def reply(query: bytes, question_end: int, rcode: int) -> bytes:
    """An answer with no records: the query's id and question, QR and RA set."""
    qid, flags = struct.unpack("!HH", query[:4])
    flags = 0x8000 | (flags & 0x7900) | 0x0080 | rcode  # QR, opcode and RD kept, RA
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0) + query[12:question_end]


class Resolver(asyncio.DatagramProtocol):
    """Answers one sandbox's queries (see the module docstring)."""

    def __init__(
        self,
        sandbox_id: str,
        rules: EgressRules | None,
        upstream: tuple[str, int] | None,
        on_answer: OnAnswer,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.rules = rules  # None: every name (open mode)
        self.upstream = upstream
        self.on_answer = on_answer
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._allowed: dict[str, float] = {}  # address -> until when the set surely has it

    @classmethod
    async def serve(
        cls,
        sandbox_id: str,
        bind_ip: str,
        rules: EgressRules | None,
        upstream: tuple[str, int] | None,
        on_answer: OnAnswer,
    ) -> Resolver:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            lambda: cls(sandbox_id, rules, upstream, on_answer), local_addr=(bind_ip, 53)
        )
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(self._tasks) >= MAX_IN_FLIGHT:
            return  # a client retries; a flood gets no amplification
        task = asyncio.create_task(self._handle(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for task in self._tasks:
            task.cancel()

    async def _handle(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            answer = await self.answer(data)
        except DNSFormatError:
            return  # not DNS: no answer at all
        if answer is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(answer, addr)

    async def answer(self, query: bytes) -> bytes | None:
        _qid, flags, name, qtype, end = parse_question(query)
        if flags & 0x8000:
            return None  # a response sent to us: ignore
        if (flags >> 11) & 0xF != 0:
            return reply(query, end, REFUSED)  # only standard queries
        if self.rules is not None and not self.rules.allows_name(name):
            log.info("dns refused", sandbox=self.sandbox_id, name=name)
            return reply(query, end, NXDOMAIN)
        if qtype != TYPE_A:
            return reply(query, end, NOERROR)
        if self.upstream is None:
            return reply(query, end, SERVFAIL)
        # the question alone: a client's EDNS or other records are not passed on
        question = query[:4] + struct.pack("!HHHH", 1, 0, 0, 0) + query[12:end]
        response = await self._ask_upstream(question)
        if response is None or response[:2] != query[:2]:
            return reply(query, end, SERVFAIL)
        try:
            found = answers_of(response)
        except DNSFormatError:
            return reply(query, end, SERVFAIL)
        now = time.monotonic()
        # open mode allows every address anyway; an address the set holds for at least half
        # this TTL more needs no nft call (repeated queries cost the engine nothing)
        new = [(ip, ttl) for ip, ttl in found if self._allowed.get(ip, 0) < now + ttl / 2]
        if new and self.rules is not None:
            try:
                await self.on_answer(new)  # allowed before the sandbox sees the address
            except Exception as exc:
                log.warning("could not allow resolved addresses", error=str(exc))
                return reply(query, end, SERVFAIL)
            for ip, ttl in new:
                self._allowed[ip] = now + min(max(ttl, 60), 86400)
        return response

    def forget(self) -> None:
        """The set was emptied (a name rule went away): nothing is known to be in it."""
        self._allowed.clear()

    async def _ask_upstream(self, query: bytes) -> bytes | None:
        assert self.upstream is not None
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
                if not got.done():
                    got.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=self.upstream)
        try:
            transport.sendto(query)
            return await asyncio.wait_for(got, UPSTREAM_TIMEOUT_S)
        except TimeoutError:
            return None
        finally:
            transport.close()
