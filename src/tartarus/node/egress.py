"""Styx egress rules: what an `allowlist` or `open` sandbox may reach, as nftables rules.

A rule list (`SandboxSpec.egress`) holds IPv4 CIDRs (`10.1.2.0/24`, `192.0.2.7`), domain
names (`pypi.org`) and wildcards (`*.github.com`: any name below github.com, not github.com
itself). CIDRs go into the sandbox's `cidrs` set; names are never resolved here: our DNS
resolver (node/dns.py) answers only allowed names and adds each answer to the sandbox's `dns`
set with the record's TTL before replying, so an address is reachable only once this
sandbox resolved an allowed name to it.

Each sandbox gets its own table (`inet tsb_<hex>`), matching only its own host-side veth:
tables compose (a drop anywhere is final), so adding or deleting one never touches another,
and teardown is one `delete table`. What a sandbox can never reach, whatever its rules: the
host itself (input chain: only our resolver's UDP port 53 on its veth address), other
sandboxes (the address pool), loopback, link-local (cloud metadata 169.254.169.254),
multicast and reserved ranges; in `allowlist` mode also DNS (port 53) to anyone but us. In
`open` mode the private ranges (`TARTARUS_NET_BLOCKED`, RFC 1918 by default) are dropped too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network

from tartarus.errors import InvalidRequestError

MAX_RULES = 256
POOL = IPv4Network("100.96.0.0/16")  # sandbox veth pairs, a /30 each (node/network.py)
# never reachable from a sandbox, in any mode and whatever its rules
ALWAYS_BLOCKED = tuple(
    IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local: cloud metadata services
        "224.0.0.0/4",
        "240.0.0.0/4",
        str(POOL),  # other sandboxes
    )
)
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
IFACE_PREFIX = "tsb"  # host-side veths: tsb<12 hex>; the guard matches "tsb*"
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class EgressRules:
    cidrs: tuple[IPv4Network, ...] = ()
    names: frozenset[str] = frozenset()  # exact names
    suffixes: tuple[str, ...] = ()  # "*.github.com" -> "github.com"

    def allows_name(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        return name in self.names or any(name.endswith("." + s) for s in self.suffixes)


def parse_rules(rules: Iterable[str]) -> EgressRules:
    """Validate and sort a rule list; a bad rule raises InvalidRequestError naming it."""
    cidrs: list[IPv4Network] = []
    names: set[str] = set()
    suffixes: list[str] = []
    items = list(rules)
    if len(items) > MAX_RULES:
        raise InvalidRequestError(f"at most {MAX_RULES} egress rules, not {len(items)}")
    for raw in items:
        rule = raw.strip().lower()
        if not rule:
            raise InvalidRequestError("an egress rule is empty")
        if rule[0].isdigit() or ":" in rule:
            cidrs.append(_cidr(raw, rule))
        elif rule.startswith("*."):
            suffixes.append(_domain(raw, rule[2:]))
        else:
            names.add(_domain(raw, rule))
    return EgressRules(
        tuple(ipaddress.collapse_addresses(cidrs)), frozenset(names), tuple(suffixes)
    )


def _cidr(raw: str, rule: str) -> IPv4Network:
    try:
        net = ipaddress.ip_network(rule, strict=False)
    except ValueError:
        raise InvalidRequestError(f"egress rule {raw!r} is neither a CIDR nor a domain") from None
    if not isinstance(net, IPv4Network):
        raise InvalidRequestError(f"egress rule {raw!r}: IPv6 egress is not supported")
    return net


def _domain(raw: str, name: str) -> str:
    name = name.rstrip(".")
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(x) for x in labels):
        raise InvalidRequestError(
            f"egress rule {raw!r} is not a valid domain name (e.g. pypi.org, *.github.com)"
        )
    if labels[-1].isdigit():
        raise InvalidRequestError(f"egress rule {raw!r} is neither a CIDR nor a domain")
    return name


def table_name(sandbox_id: str) -> str:
    return f"tsb_{sandbox_id.removeprefix('sb-')}"


def parse_blocked(value: str) -> tuple[IPv4Network, ...]:
    """`TARTARUS_NET_BLOCKED`: comma-separated CIDRs `open` sandboxes may not reach."""
    out = []
    for item in filter(None, (x.strip() for x in value.split(","))):
        try:
            out.append(IPv4Network(item, strict=False))
        except ValueError:
            raise InvalidRequestError(f"TARTARUS_NET_BLOCKED: {item!r} is not a CIDR") from None
    return tuple(out)


def _set(nets: Iterable[IPv4Network]) -> str:
    return "{ " + ", ".join(str(n) for n in ipaddress.collapse_addresses(nets)) + " }"


def ruleset(
    sandbox_id: str,
    iface: str,
    host_ip: str,
    mode: str,
    rules: EgressRules,
    blocked: Sequence[IPv4Network],
    *,
    keep_dns: bool = True,
) -> str:
    """The sandbox's table as an `nft -f` script: made if missing, its rules and CIDRs
    replaced, in one transaction (a packet sees the old rules or the new ones). Addresses
    resolved earlier stay allowed (`keep_dns`) unless a name rule went away."""
    t = f"inet {table_name(sandbox_id)}"
    never = list(ALWAYS_BLOCKED) + (list(blocked) if mode == "open" else [])
    chains = {
        "input": "type filter hook input priority -5; policy accept;",
        "forward": "type filter hook forward priority -5; policy accept;",
        "postrouting": "type nat hook postrouting priority 100; policy accept;",
    }
    lines = [
        f"table {t} {{",
        "  set cidrs { type ipv4_addr; flags interval; }",
        "  set dns { type ipv4_addr; flags timeout; }",
        *(f"  chain {name} {{ {hook} }}" for name, hook in chains.items()),
        "}",
        f"flush set {t} cidrs",
        *(f"flush chain {t} {name}" for name in chains),
    ]
    if not keep_dns:
        lines.append(f"flush set {t} dns")
    if rules.cidrs:
        lines.append(f"add element {t} cidrs {_set(rules.cidrs)}")
    i = f'iifname "{iface}"'
    rule_lines = [
        f"input {i} ip daddr {host_ip} udp dport 53 accept",
        f"input {i} drop",
        f'forward oifname "{iface}" ct state established,related accept',
        f'forward oifname "{iface}" drop',
        f"forward {i} ip daddr {_set(never)} drop",
    ]
    if mode == "open":
        rule_lines.append(f"forward {i} accept")
    else:
        rule_lines += [
            f"forward {i} meta l4proto {{ tcp, udp }} th dport 53 drop",
            f"forward {i} ct state established,related accept",
            f"forward {i} ip daddr @cidrs accept",
            f"forward {i} ip daddr @dns accept",
        ]
    rule_lines += [
        f"forward {i} drop",
        f'postrouting {i} oifname != "{IFACE_PREFIX}*" masquerade',
    ]
    lines += [f"add rule {t} {r}" for r in rule_lines]
    return "\n".join(lines) + "\n"


def add_addresses(sandbox_id: str, answers: Sequence[tuple[str, int]]) -> str:
    """An `nft -f` script adding resolved addresses to the sandbox's `dns` set, each for its
    record's TTL (at least a minute, so a connection right after a short-lived answer works;
    at most a day)."""
    elements = ", ".join(f"{ip} timeout {min(max(ttl, 60), 86400)}s" for ip, ttl in answers)
    return f"add element inet {table_name(sandbox_id)} dns {{ {elements} }}"


# Installed only when we turn forwarding on ourselves (it was off): forwarding then stays
# limited to traffic from or to sandbox veths, as if it were still off for everything else.
GUARD = f"""add table inet tartarus_guard
delete table inet tartarus_guard
table inet tartarus_guard {{
  chain forward {{ type filter hook forward priority -10; policy accept;
    iifname "{IFACE_PREFIX}*" accept
    oifname "{IFACE_PREFIX}*" accept
    drop
  }}
}}
"""
