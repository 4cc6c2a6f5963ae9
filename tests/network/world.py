"""The tests' stand-in for the internet: run as `unshare --net python3 world.py LOGDIR`.

In a network namespace of its own (its veth's addresses are set up by the fixture) it serves:
a TCP banner on port 8080 and a UDP echo on 9090 (every address), a DNS server on port 53
that maps the tests' names to the world's addresses, and an HTTP "metadata service" answer on
port 80. Every DNS question it receives is appended to LOGDIR/queries, so a test can assert a
name never reached it. It prints "ready" when it listens and runs until killed.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from pathlib import Path

IP_PKTINFO = 8  # Linux; not in the socket module
SERVER = "100.66.0.53"
NAMES = {
    "allowed.test": "100.66.1.10",
    "api.wild.test": "100.66.1.11",
    "denied.test": "100.66.1.20",
    "meta.test": "169.254.169.254",
}


def tcp_banner(port: int, text: bytes) -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(64)
    while True:
        conn, _ = server.accept()
        with conn:
            conn.sendall(text)


def udp_echo(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind(("0.0.0.0", port))
    while True:
        data, ancillary, _, addr = sock.recvmsg(2048, 256)
        # answer from the address asked (a socket on 0.0.0.0 would use the primary one)
        info = next(d for level, kind, d in ancillary if kind == IP_PKTINFO)
        sock.sendmsg([b"echo:" + data], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0, addr)


ready = threading.Event()


def dns(log: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    while True:  # its own address, so answers come from it; the fixture adds it soon
        try:
            sock.bind((SERVER, 53))
            break
        except OSError:
            time.sleep(0.02)
    ready.set()
    while True:
        query, addr = sock.recvfrom(2048)
        try:
            labels, i = [], 12
            while query[i]:
                labels.append(query[i + 1 : i + 1 + query[i]].decode())
                i += 1 + query[i]
            qtype = struct.unpack("!H", query[i + 1 : i + 3])[0]
            end = i + 5
        except (IndexError, UnicodeDecodeError, struct.error):
            continue
        name = ".".join(labels).lower()
        with open(log, "a") as f:
            f.write(name + "\n")
        ip = NAMES.get(name)
        header = query[:2] + struct.pack("!H", 0x8180 if ip else 0x8183)
        if ip and qtype == 1:
            answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(ip)
            reply = header + struct.pack("!HHHH", 1, 1, 0, 0) + query[12:end] + answer
        else:
            reply = header + struct.pack("!HHHH", 1, 0, 0, 0) + query[12:end]
        # from the address asked, whatever the routing would pick (IP_PKTINFO)
        src = socket.inet_aton(SERVER)
        info = struct.pack("@i4s4s", 0, src, src)
        sock.sendmsg([reply], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0, addr)


def main() -> None:
    log = Path(sys.argv[1]) / "queries"
    log.touch()
    for target, args in (
        (tcp_banner, (8080, b"internet\n")),
        (tcp_banner, (80, b"metadata\n")),
        (udp_echo, (9090,)),
        (dns, (log,)),
    ):
        threading.Thread(target=target, args=args, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
