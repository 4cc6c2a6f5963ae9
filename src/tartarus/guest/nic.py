"""A microVM guest's NIC: the sandbox's address, default route and resolver, set by PID 1.

Why ioctls and not busybox `ip`: under TCG a fresh clone translates every code path it runs
for the first time, and the first exec alone cost ~250 ms; with these syscalls from the
Python that already runs, a networked clone is ready ~0.3 s after a `none` one instead of
~0.45 s (measured here). A clone's template booted without an address and a fork from a
memory snapshot has its parent's, so everything is replaced, not added to.
Stdlib only, Python >= 3.9 (the image's python3).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct

SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
SIOCSIFADDR, SIOCSIFNETMASK = 0x8916, 0x891C
SIOCADDRT, SIOCDELRT = 0x890B, 0x890C
IFF_UP = 0x1
RTF_UP, RTF_GATEWAY = 0x1, 0x2
# struct rtentry (x86-64): pad1, dst, gateway, genmask, flags, pad2, pad3, pad4, metric,
# dev, mtu, window, irtt
RTENTRY = struct.Struct("@L16s16s16sHhLPhPLLH")


def _sockaddr(address: str) -> bytes:
    return struct.pack("=H2x4s8x", socket.AF_INET, socket.inet_aton(address))


def _ifreq(name: str, data: bytes) -> bytes:
    return struct.pack("16s", name.encode()) + data.ljust(24, b"\0")


def _route(sock: socket.socket, request: int, gateway: str | None) -> None:
    flags = RTF_UP | (RTF_GATEWAY if gateway else 0)
    zero = _sockaddr("0.0.0.0")
    via = _sockaddr(gateway) if gateway else zero
    entry = RTENTRY.pack(0, zero, via, zero, flags, 0, 0, 0, 0, 0, 0, 0, 0)
    fcntl.ioctl(sock, request, entry.ljust(120, b"\0"))


def configure(nic: str, address: str, prefix: int, gateway: str, nameserver: str) -> None:
    """Up, the one address, the default route via `gateway`; /etc/resolv.conf."""
    ipv6 = f"/proc/sys/net/ipv6/conf/{nic}/disable_ipv6"  # Styx's rules are IPv4's
    with contextlib.suppress(OSError), open(ipv6, "w") as f:
        f.write("1")
    mask = socket.inet_ntoa(struct.pack("!I", (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, _ifreq(nic, b""))[:18])[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, _ifreq(nic, struct.pack("H", flags | IFF_UP)))
        fcntl.ioctl(sock, SIOCSIFADDR, _ifreq(nic, _sockaddr(address)))  # replaces the old
        fcntl.ioctl(sock, SIOCSIFNETMASK, _ifreq(nic, _sockaddr(mask)))
        with contextlib.suppress(OSError):  # the parent's, in a fork
            _route(sock, SIOCDELRT, None)
        _route(sock, SIOCADDRT, gateway)
    tmp = "/etc/.resolv.conf.tartarus"
    with open(tmp, "w") as f:
        f.write(f"nameserver {nameserver}\noptions timeout:2 attempts:2\n")
    os.replace(tmp, "/etc/resolv.conf")
