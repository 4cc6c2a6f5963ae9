"""PID 1 of a microVM guest: the guest agent's connections multiplexed over one virtio port.

Why: a microVM has no shared socket with the host (no vsock here, and a host socket passed as
fd 3 cannot cross a VM boundary). What it has is a virtio-serial port whose host side is a
unix socket of QEMU's: one byte stream. So this program, started by the initramfs after
`switch_root`, runs the unchanged guest agent (listening on a socket inside the guest, as
under gVisor) and carries any number of host connections to it over the port, in frames:

    kind (u8) | connection id (u32) | body length (u32) | body

The host (runtimes/microvm_channel.py) opens a connection (OPEN), both sides send DATA and
EOF (no more data from me: a half-close), and CLOSE aborts one. HELLO, sent by every host
that connects (a new engine after a restart, a clone restored from a snapshot), drops every
connection of an earlier host, sets the guest clock and reseeds the kernel RNG with host
entropy (clones from one snapshot would otherwise share both); the guest answers READY once
the agent accepts connections. The agent is started after the first HELLO, so its deadline
is judged by a clock that is right. TIME sets the clock and reseeds alone, keeping the
connections: the host sends it when the VM goes on after a pause (a stopped VM's clock stops).
A HELLO may also carry the address of the guest's NIC (a network other than `none`).

It also acts as init: it reaps orphans and powers the VM off when the agent exits. Stdlib
only, Python >= 3.9: it runs on the image's python3.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tartarus.guest import nic, protocol
else:  # run as a script with -I: our directory is not on the path by itself
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import nic
    import protocol

FRAME = struct.Struct("!BII")
MAX_BODY = 1 << 16
HELLO, READY, OPEN, DATA, EOF, CLOSE, TIME = 1, 2, 3, 4, 5, 6, 7
PORT_NAME = "tartarus.agent"
RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
HIGH_WATER = 1 << 20  # stop reading the agent's sockets while the port lags this much
BUSYBOX = "/.tartarus/busybox"
NIC = "eth0"  # the VM's only one (runtimes/microvm_net.py)


def log(message: str) -> None:
    with contextlib.suppress(OSError):
        sys.stderr.write(f"tartarus-init: {message}\n")
        sys.stderr.flush()


def find_port(name: str = PORT_NAME) -> str:
    for _ in range(500):
        with contextlib.suppress(OSError):
            for entry in os.listdir("/sys/class/virtio-ports"):
                with open(f"/sys/class/virtio-ports/{entry}/name") as f:
                    if f.read().strip() == name:
                        return f"/dev/{entry}"
        time.sleep(0.01)
    raise OSError(f"no virtio port named {name}")


def _agent_settings(settings: Any) -> dict[str, Any] | None:
    """The HELLO's settings for the agent, its deadline made absolute by the clock the HELLO
    has just set: the host sends the seconds left, and the guest may hear it only after a boot."""
    if not isinstance(settings, dict):
        return None
    if "deadline_in" in settings:
        left = settings.pop("deadline_in")
        settings["deadline"] = None if left is None else time.time() + float(left)
    return settings


def apply_hello(hello: dict[str, Any]) -> None:
    """Set the clock and reseed the kernel RNG from the host's HELLO."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        time.clock_settime(time.CLOCK_REALTIME, float(hello["time"]))
    seed = bytes.fromhex(hello.get("entropy", ""))
    if seed:
        try:
            fd = os.open("/dev/urandom", os.O_WRONLY)
            try:
                fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
                fcntl.ioctl(fd, RNDRESEEDCRNG)
            finally:
                os.close(fd)
        except OSError as exc:
            log(f"cannot reseed the RNG: {exc}")


def install_seccomp(libc: Any, program: bytes) -> None:
    """The sandbox's seccomp filter (runtimes/seccomp_bpf.py compiled it from its profile)
    on this process and all it starts; it fails closed: no agent without it."""
    if not program:
        return
    code = ctypes.create_string_buffer(program, len(program))
    fprog = ctypes.create_string_buffer(
        struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(code)), 16
    )
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot install the seccomp filter")


class Conn:
    """One host connection, relayed to the agent's socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = bytearray()  # from the host, not yet written to the agent
        self.eof_in = False  # the host sent EOF: shut our write side once `out` is written
        self.eof_out = False  # the agent closed its side: we sent EOF to the host


class Mux:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.agent_socket = str(config["agent_socket"])
        self.sel = selectors.DefaultSelector()
        self.port = os.open(find_port(), os.O_RDWR | os.O_NONBLOCK)
        self.port_in = bytearray()
        self.port_out = bytearray()
        self.conns: dict[int, Conn] = {}
        self.agent_pid: int | None = None
        self.ready_pending = False  # a host said HELLO and waits for READY
        self.settings: dict[str, Any] | None = None  # for the agent, before READY
        self.network: dict[str, Any] | None = None  # what nic.configure last set
        self.network_error = ""  # why it failed: READY tells the host, which fails the start
        self.host_away = False

    # -- the agent ---------------------------------------------------------------------------

    def start_agent(self) -> None:
        cfg = self.config
        run_dir = os.path.dirname(self.agent_socket)  # the agent binds its socket there
        os.makedirs(run_dir, exist_ok=True)
        os.chown(run_dir, int(cfg["uid"]), int(cfg["gid"]))
        os.chmod(run_dir, 0o700)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child execs
            try:
                os.setsid()
                # no setuid binary of the image elevates anyone, and no capability is left
                # to gain (as in the containers)
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
                cap = 0
                while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:  # EINVAL past the last
                    cap += 1
                os.setgroups([])
                os.setgid(int(cfg["gid"]))
                os.setuid(int(cfg["uid"]))
                nproc = int(cfg.get("pids") or 0)
                if nproc:
                    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
                os.chdir(str(cfg.get("cwd") or "/"))
                args = [str(a) for a in cfg["args"]]
                env = {str(k): str(v) for k, v in cfg["env"].items()}
                install_seccomp(libc, bytes.fromhex(str(cfg.get("seccomp") or "")))
                os.execve(args[0], args, env)
            except BaseException as exc:
                log(f"cannot start the guest agent: {exc!r}")
            os._exit(127)
        self.agent_pid = pid

    def ready_body(self) -> bytes:
        ready: dict[str, Any] = {"agent_pid": self.agent_pid}
        if self.network_error:
            ready["network_error"] = self.network_error
        return json.dumps(ready).encode()

    def agent_listening(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.agent_socket)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def configure_agent(self, settings: dict[str, Any]) -> None:
        """A clone's agent runs since its template's boot: give it this sandbox's deadline
        and environment (the agent's own `deadline` and `env` requests)."""
        requests = []
        if "env" in settings:
            requests.append({"op": "env", "env": settings["env"]})
        if "deadline" in settings:
            requests.append({"op": "deadline", "deadline": settings["deadline"]})
        for request in requests:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(30)
                    sock.connect(self.agent_socket)
                    sock.sendall(protocol.encode_frame(request))
                    frame = protocol.recv_frame(sock)
                header = frame[0] if frame is not None else {"type": "eof"}
                if header.get("type") != "ok":
                    log(f"the agent refused {request['op']}: {header}")
            except (OSError, protocol.ProtocolError) as exc:
                log(f"cannot configure the agent ({request['op']}): {exc}")

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.agent_pid:
                log(f"the guest agent exited (status {status}): powering off")
                power_off()

    # -- frames ------------------------------------------------------------------------------

    def send(self, kind: int, cid: int, body: bytes = b"") -> None:
        if self.host_away:
            return
        for i in range(0, max(len(body), 1), MAX_BODY):
            part = body[i : i + MAX_BODY]
            self.port_out += FRAME.pack(kind, cid, len(part)) + part

    def on_frame(self, kind: int, cid: int, body: bytes) -> None:
        if kind == HELLO:
            for c in list(self.conns):
                self.drop(c)
            hello = json.loads(body.decode())
            apply_hello(hello)
            network = hello.get("network")
            if network and network != self.network:  # before any command can run
                try:
                    nic.configure(NIC, **network)
                    self.network, self.network_error = network, ""
                except (OSError, TypeError, ValueError) as exc:
                    self.network_error = f"{exc!r}"
                    log(f"cannot set the network up: {exc!r}")
            self.settings = _agent_settings(hello.get("agent"))
            if self.agent_pid is None:
                self.start_agent()
                self.ready_pending = True  # READY once it listens
            elif self.settings and "env" in self.settings:
                self.configure_agent(self.settings)  # before any command runs
                self.settings = None
                self.ready_pending = True
            else:  # it listens already (a clone, a new engine): READY at once, and its
                self.ready_pending = True  # deadline (a backstop only) right after
                self.send(READY, 0, self.ready_body())
                self.ready_pending = False
        elif kind == TIME:
            apply_hello(json.loads(body.decode()))
        elif kind == OPEN:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.agent_socket)
            except OSError as exc:
                sock.close()
                self.send(CLOSE, cid, str(exc).encode())
                return
            sock.setblocking(False)
            self.conns[cid] = Conn(sock)
            self.sel.register(sock, selectors.EVENT_READ, cid)
        elif (conn := self.conns.get(cid)) is not None:
            if kind == DATA:
                conn.out += body
                self.flush_conn(cid, conn)
            elif kind == EOF:
                conn.eof_in = True
                self.flush_conn(cid, conn)
            elif kind == CLOSE:
                self.drop(cid)

    def drop(self, cid: int) -> None:
        conn = self.conns.pop(cid, None)
        if conn is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(conn.sock)
            conn.sock.close()

    def flush_conn(self, cid: int, conn: Conn) -> None:
        try:
            while conn.out:
                n = conn.sock.send(conn.out)
                del conn.out[:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.send(CLOSE, cid)
            self.drop(cid)
            return
        if conn.eof_in and not conn.out:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            if conn.eof_out:
                self.drop(cid)
        self.watch(cid, conn)

    def watch(self, cid: int, conn: Conn) -> None:
        events = 0
        if not conn.eof_out and len(self.port_out) < HIGH_WATER:
            events |= selectors.EVENT_READ
        if conn.out:
            events |= selectors.EVENT_WRITE
        with contextlib.suppress(KeyError, ValueError):
            if events:
                self.sel.modify(conn.sock, events, cid)
            else:
                self.sel.unregister(conn.sock)
            return
        if events:
            self.sel.register(conn.sock, events, cid)

    def from_agent(self, cid: int, conn: Conn) -> None:
        try:
            data = conn.sock.recv(MAX_BODY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.send(DATA, cid, data)
            return
        conn.eof_out = True
        self.send(EOF, cid)
        if conn.eof_in and not conn.out:
            self.drop(cid)
        else:
            self.watch(cid, conn)

    # -- the port ----------------------------------------------------------------------------

    def read_port(self) -> None:
        try:
            data = os.read(self.port, 1 << 18)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                log(f"port read: {exc}")
            data = b""
        if not data:  # no host connected (a restarting engine): wait for the next HELLO
            if not self.host_away:
                self.host_away = True
                self.port_out.clear()
                self.port_in.clear()
                for c in list(self.conns):
                    self.drop(c)
            return
        if self.host_away:
            self.host_away = False
        self.port_in += data
        while len(self.port_in) >= FRAME.size:
            kind, cid, size = FRAME.unpack_from(self.port_in)
            if len(self.port_in) < FRAME.size + size:
                break
            body = bytes(self.port_in[FRAME.size : FRAME.size + size])
            del self.port_in[: FRAME.size + size]
            self.on_frame(kind, cid, body)

    def write_port(self) -> None:
        try:
            while self.port_out:
                n = os.write(self.port, self.port_out)
                del self.port_out[:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the host went away: what it has not read is lost with it
            self.port_out.clear()

    def run(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, lambda signum, frame: None)  # init ignores it
        self.sel.register(wake_r, selectors.EVENT_READ, "wake")
        while True:
            self.reap()
            if self.ready_pending and self.agent_listening():
                self.ready_pending = False
                self.send(READY, 0, self.ready_body())
            if self.settings and not self.ready_pending:
                self.write_port()  # READY first
                self.configure_agent(self.settings)
                self.settings = None
            timeout = 0.02 if self.ready_pending else None
            if self.host_away:  # the port polls as hung up until a host connects: poll it
                timeout = 0.02
            else:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.port_out else 0)
                self.sel.register(self.port, events, "port")
            ready = self.sel.select(timeout)
            if not self.host_away:
                self.sel.unregister(self.port)
            for key, mask in ready:
                if key.data == "wake":
                    with contextlib.suppress(OSError):
                        while os.read(wake_r, 512):
                            pass
                elif key.data == "port":
                    if mask & selectors.EVENT_READ:
                        self.read_port()
                    if mask & selectors.EVENT_WRITE:
                        self.write_port()
                else:
                    cid = key.data
                    conn = self.conns.get(cid)
                    if conn is None:
                        continue
                    if mask & selectors.EVENT_WRITE:
                        self.flush_conn(cid, conn)
                    if mask & selectors.EVENT_READ and cid in self.conns:
                        self.from_agent(cid, conn)
            if self.host_away:
                self.read_port()
            for cid, conn in list(self.conns.items()):  # resume reading once the port drained
                if not conn.eof_out and len(self.port_out) < HIGH_WATER:
                    self.watch(cid, conn)


def power_off() -> None:
    os.sync()
    with contextlib.suppress(OSError):
        os.execv(BUSYBOX, [BUSYBOX, "poweroff", "-f"])
    os._exit(1)  # PID 1 exiting panics the kernel, and panic=-1 ends the VM too


def main(argv: list[str]) -> None:
    try:
        with open(argv[1] if len(argv) > 1 else "/run/tartarus/boot.json") as f:
            config = json.load(f)
        with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")  # the guest's OOM killer takes the sandbox's processes
        with contextlib.suppress(OSError):
            socket.sethostname(str(config.get("hostname") or "sandbox"))
        mux = Mux(config)
    except BaseException as exc:
        log(f"cannot start: {exc!r}")
        power_off()
        return
    try:
        mux.run()
    except BaseException as exc:
        log(f"failed: {exc!r}")
        power_off()


if __name__ == "__main__":
    main(sys.argv)
