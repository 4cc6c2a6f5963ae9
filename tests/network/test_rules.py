"""Styx's pure parts: egress rule parsing and the resolver's decisions, without sandboxes."""

from __future__ import annotations

import struct
from ipaddress import IPv4Network

import pytest

from tartarus.errors import InvalidRequestError
from tartarus.node import dns, egress


def test_rules_are_sorted_and_checked() -> None:
    rules = egress.parse_rules(
        ["10.1.2.0/24", "10.1.3.0/24", "192.0.2.7", "PyPI.org.", "*.github.com"]
    )
    assert rules.cidrs == (IPv4Network("10.1.2.0/23"), IPv4Network("192.0.2.7/32"))
    assert rules.names == frozenset({"pypi.org"})
    assert rules.allows_name("pypi.org") and rules.allows_name("PYPI.ORG.")
    assert not rules.allows_name("evil-pypi.org") and not rules.allows_name("pypi.org.evil")
    assert rules.allows_name("api.github.com") and rules.allows_name("a.b.github.com")
    assert not rules.allows_name("github.com") and not rules.allows_name("notgithub.com")


@pytest.mark.parametrize(
    "rule",
    ["", "not a domain", "localhost", "*.com", "2001:db8::/32", "10.0.0.0/33", "a..b", "-a.com"],
)
def test_bad_rules_say_which(rule: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"egress rule|empty"):
        egress.parse_rules([rule])


def test_too_many_rules() -> None:
    with pytest.raises(InvalidRequestError, match="at most"):
        egress.parse_rules([f"h{i}.example.org" for i in range(egress.MAX_RULES + 1)])


def _query(name: str, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(x)]) + x.encode() for x in name.split("."))
    return (
        struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0)
        + labels
        + b"\0"
        + struct.pack("!HH", qtype, 1)
    )


async def test_resolver_refuses_without_asking_upstream() -> None:
    asked: list[object] = []

    async def allow(answers: list[tuple[str, int]]) -> None:
        asked.append(answers)

    # an upstream that does not exist: a refusal must never need it
    resolver = dns.Resolver("sb-x", egress.parse_rules(["pypi.org"]), ("192.0.2.1", 9), allow)
    for name in ("exfil-c2VjcmV0.example.com", "pypi.org.evil.com"):
        answer = await resolver.answer(_query(name))
        assert answer is not None and answer[3] & 0xF == dns.NXDOMAIN
        assert answer[:2] == b"\x00\x07"  # the query's id
    aaaa = await resolver.answer(_query("pypi.org", qtype=28))
    assert aaaa is not None and aaaa[3] & 0xF == dns.NOERROR and aaaa[6:8] == b"\0\0"
    assert asked == []
    with pytest.raises(dns.DNSFormatError):
        await resolver.answer(b"\x00\x01garbage")


def test_answers_follow_compression() -> None:
    query = _query("pypi.org")
    cname = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 300, 5) + b"\x01x\x01y\x00"
    a_rec = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 42, 4) + bytes([100, 66, 1, 10])
    response = query[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, 2, 0, 0) + query[12:]
    assert dns.answers_of(response + cname + a_rec) == [("100.66.1.10", 42)]
    loop = query[:12] + b"\xc0\x0c" + b"\0\1\0\1"
    with pytest.raises(dns.DNSFormatError):
        dns.parse_question(loop)
