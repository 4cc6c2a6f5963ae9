"""The guest agent: PID 1 of every sandbox, serving exec, files and `run_code` over one socket.

Why it exists: the host needs one uniform, runtime-independent way to run commands, stream their
output, move files and keep a stateful interpreter inside any image (crun/runc, gVisor, microVMs),
and something must act as init (reap orphans, kill everything on shutdown or deadline). It is
stdlib-only and runs on Python >= 3.9 because it is bind-mounted into arbitrary images.

Started as::

    python3 -I -S /.tartarus/guest/agent.py --fd 3 [--deadline EPOCH] [--env-file PATH]
        [--workdir DIR] [--journal-bytes N] [--preimport MOD,MOD...]

(`--listen PATH` instead of `--fd` makes it bind the socket itself; used by tests.) The default
cwd of commands and interpreters is `--workdir`, else the agent's own cwd.

The main command (op `main`, once per agent) differs from `exec`: it is not tied to the
connection that started it. The agent reads its output into a bounded journal of numbered
records (`--journal-bytes`), and any number of `attach` connections replay records after a
given seq, follow live output and get the exit record, so the host can restart and re-attach
without killing the command or losing its output.

Reaping: every process we spawn is a `subprocess.Popen` whose status is collected by a dedicated
waiter thread (`Popen.wait`). Orphans re-parented to us are reaped by the main loop, which only
*peeks* with `waitid(WNOWAIT)` and reaps a pid only if it is not one of ours, holding the spawn
lock so a freshly forked child can never be mistaken for an orphan. This keeps Popen's exit
statuses intact (the classic "init steals the status, Popen reports 0" bug). Contexts forked by
the zygote reach us as orphans too: none is reaped while one is on its way (`adopting`).

Python starts warm: a zygote (zygote.py, managed by zygote_client.py) pre-imports the
template's modules; `run_code` contexts are forked from it and a faithful `python3 -c`
consumes it, so neither pays the interpreter's start-up at request time.
"""

# ruff: noqa: E402  (Python's zygote is started before our own imports, see zygote_start.py)
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs the agent 2 ms and 0.5 MiB
_HERE = os.path.dirname(os.path.abspath(__file__))
if TYPE_CHECKING:
    from typing import Any

    from tartarus.guest import interpreter, protocol, zygote_client, zygote_start
else:
    if _HERE not in sys.path:
        sys.path.insert(0, _HERE)
    import zygote_start

# The zygote's ~10 ms start-up overlaps the ~20 ms of our own imports below.
EARLY_ZYGOTE = zygote_start.early(sys.argv[1:]) if __name__ == "__main__" else None

import contextlib
import errno
import json
import pwd
import queue
import selectors
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

if not TYPE_CHECKING:
    import interpreter  # the format of its control messages
    import protocol
    import zygote_client

INTERPRETER_PATH = os.path.join(_HERE, "interpreter.py")
ZYGOTE_PATH = os.path.join(_HERE, "zygote.py")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FILE_CHUNK = 1 << 20  # file data frames
EXIT_GRACE = 0.2  # keep draining output this long after the main process exited
STDIN_HIGH_WATER = 1 << 20  # stop reading the client while this much stdin is unwritten
INTERRUPT_GRACE = 2.0  # after a client left mid-run_code: SIGINT, then kill after this long
EXIT_DEADLINE = 124
REQUEST_TIMEOUT = 60.0  # for the first frame of a connection
DEFAULT_JOURNAL_BYTES = 16 << 20  # output of the main command kept for (re-)attaching clients
ATTACH_BATCH = 1 << 20  # journal bytes copied out per lock hold while replaying


def log(message: str) -> None:
    """One line per agent-internal event on stderr (the runtime collects it)."""
    line = " ".join(str(message).split())
    try:
        sys.stderr.write(f"tartarus-agent[{os.getpid()}]: {line}\n")
        sys.stderr.flush()
    except Exception:
        pass


class RequestError(Exception):
    """A failure reported to the client as an error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def standby(target: Callable[[Any], None]) -> Callable[[Any], None]:
    """Start the thread that will serve a process *before* the process exists.

    In a sandbox whose pids a fork bomb used up, a thread started after the fork could not
    start at all. Returns the hand-over: call it once with the work, or None to release.
    """
    box: queue.Queue[Any] = queue.Queue(maxsize=1)

    def run() -> None:
        item = box.get()
        if item is not None:
            target(item)

    try:
        threading.Thread(target=run, daemon=True).start()
    except RuntimeError:
        raise RequestError("internal", "out of resources in the sandbox") from None
    return box.put


class ClientGone(Exception):
    """The client closed the connection."""


_ERRNO_CODES = {
    errno.ENOENT: "not_found",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EROFS: "permission",
    errno.EISDIR: "invalid",
    errno.ENOTDIR: "invalid",
    errno.ENOTEMPTY: "invalid",
    errno.EEXIST: "invalid",
    errno.EINVAL: "invalid",
    errno.ELOOP: "invalid",
    errno.ENAMETOOLONG: "invalid",
}


def os_error(exc: OSError, path: str) -> RequestError:
    code = _ERRNO_CODES.get(exc.errno or 0, "internal")
    return RequestError(code, f"{path}: {exc.strerror or exc}")


def _child_setup() -> None:
    """Runs in the forked child before exec: undo the agent's OOM protection."""
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    except OSError:
        pass


def _oom_protected() -> bool:
    """Whether this agent has an OOM protection its commands must not inherit (a microVM's
    init gives it one; a container's agent has none). Only then does a spawn need a
    `preexec_fn`, which costs a full fork of the agent (~4 ms) instead of a vfork."""
    try:
        with open("/proc/self/oom_score_adj", "rb") as f:
            return int(f.read().strip() or b"0") != 0
    except (OSError, ValueError):
        return False


class Child:
    """A process we spawned (or adopted from the zygote); a waiter thread collects its status
    and makes `exit_fd` readable."""

    def __init__(self, proc: subprocess.Popen[bytes] | zygote_client.Adopted) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.exited = threading.Event()
        self.exit_fd, self._exit_w = os.pipe()

    def notify_exit(self) -> None:
        self.exited.set()
        try:
            os.write(self._exit_w, b"x")
        finally:
            os.close(self._exit_w)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the child's whole process group (it is a session leader)."""
        # A session leader cannot leave its group, so if the group is gone, so is the process.
        with contextlib.suppress(OSError):
            os.killpg(self.pid, sig)

    def close(self) -> None:
        """Release fds; only after `exited` is set."""
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with contextlib.suppress(OSError):
            os.close(self.exit_fd)


def _returncode_fields(rc: int | None) -> tuple[int | None, int | None]:
    if rc is None:
        return None, None
    if rc < 0:
        return None, -rc
    return rc, None


def _drain(fd: int) -> bytes:
    """Read whatever is available on a non-blocking fd right now."""
    out = bytearray()
    while True:
        try:
            data = os.read(fd, protocol.CHUNK_SIZE)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break
        if not data:
            break
        out += data
        if len(out) > 16 * protocol.CHUNK_SIZE:
            break
    return bytes(out)


def _send_chunks(conn: socket.socket, kind: str, data: bytes) -> None:
    for i in range(0, len(data), protocol.CHUNK_SIZE):
        protocol.send_frame(conn, {"type": kind}, data[i : i + protocol.CHUNK_SIZE])


class Interpreter:
    """One persistent `run_code` context: an interpreter.py process and its control socket."""

    def __init__(self, agent: Agent, name: str) -> None:
        self.agent = agent
        self.name = name
        self.lock = threading.Lock()  # calls to one context are serialized
        self.child: Child | None = None
        self.ctl: socket.socket | None = None

    def _start(self) -> tuple[Child, socket.socket]:
        if self.child is not None and not self.child.exited.is_set() and self.ctl is not None:
            return self.child, self.ctl
        self.discard()
        zygotes = self.agent.zygotes
        forked = zygotes.fork_context() if zygotes is not None else None
        if forked is not None and isinstance(forked[0], Child):
            child, ours = forked[0], forked[1]
        else:
            child, ours = self._spawn()
        for stream in (child.proc.stdout, child.proc.stderr):
            assert stream is not None
            os.set_blocking(stream.fileno(), False)
        self.child, self.ctl = child, ours
        return child, ours

    def _spawn(self) -> tuple[Child, socket.socket]:
        """Without a zygote: a fresh `python3 -u interpreter.py`."""
        ours, theirs = socket.socketpair()
        try:
            argv = [self.agent.python, "-u", INTERPRETER_PATH, "--fd", str(theirs.fileno())]
            child = self.agent.spawn(
                argv,
                env=dict(self.agent.base_env),
                cwd=self.agent.workdir,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return child, ours

    def discard(self) -> None:
        """Kill the interpreter (state is lost) and release its resources."""
        child, ctl = self.child, self.ctl
        self.child = self.ctl = None
        if ctl is not None:
            ctl.close()
        if child is not None:
            child.kill_group()
            child.exited.wait(5)
            child.close()

    def run(self, conn: socket.socket, code: str, timeout: float | None) -> None:
        with self.lock:
            try:
                child, ctl = self._start()
            except OSError as exc:
                raise RequestError("internal", f"cannot start the interpreter: {exc}") from None
            self._run(conn, child, ctl, code, timeout)

    def _run(
        self,
        conn: socket.socket,
        child: Child,
        ctl: socket.socket,
        code: str,
        timeout: float | None,
    ) -> None:
        proc = child.proc
        assert proc.stdout is not None and proc.stderr is not None
        outs = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
        client_alive = True

        def forward(kind: str, data: bytes) -> None:
            nonlocal client_alive
            if client_alive and data:
                try:
                    _send_chunks(conn, kind, data)
                except OSError:
                    client_alive = False

        # Output left over from background activity between calls belongs to nobody: drop it.
        for fd in outs:
            _drain(fd)
        result: dict[str, Any] | None = None
        died = timed_out = False
        try:
            ctl.sendall(interpreter.encode_cell(code))
        except OSError:
            died = True
        sel = selectors.DefaultSelector()
        try:
            for fd, kind in outs.items():
                sel.register(fd, selectors.EVENT_READ, kind)
            sel.register(ctl, selectors.EVENT_READ, "ctl")
            sel.register(conn, selectors.EVENT_READ, "client")
            deadline = time.monotonic() + timeout if timeout else None
            interrupted_at: float | None = None
            while result is None and not died:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    timed_out = True
                    break
                if interrupted_at is not None and now - interrupted_at >= INTERRUPT_GRACE:
                    break
                waits = [t - now for t in (deadline,) if t is not None]
                if interrupted_at is not None:
                    waits.append(interrupted_at + INTERRUPT_GRACE - now)
                for key, _ in sel.select(min(waits) if waits else None):
                    tag = key.data
                    if tag in ("stdout", "stderr"):
                        try:
                            data = os.read(key.fd, protocol.CHUNK_SIZE)
                        except (BlockingIOError, InterruptedError):
                            continue
                        if not data:
                            sel.unregister(key.fd)
                        forward(tag, data)
                    elif tag == "ctl":
                        result = interpreter.read_result(ctl.recv)
                        died = result is None
                    elif tag == "client":
                        try:
                            gone = not conn.recv(65536)
                        except OSError:
                            gone = True
                        if gone:
                            # Abort the cell but keep the state: KeyboardInterrupt in user code.
                            client_alive = False
                            sel.unregister(conn)
                            interrupted_at = time.monotonic()
                            with contextlib.suppress(OSError):
                                os.kill(child.pid, signal.SIGINT)
        finally:
            sel.close()
        for fd, kind in outs.items():
            forward(kind, _drain(fd))
        if result is None:
            if died:
                child.exited.wait(2)
            exit_code, sig = _returncode_fields(child.proc.returncode)
            self.discard()
            if timed_out:
                name = "TimeoutError"
                value = (
                    f"execution exceeded the {timeout:g}s timeout; the interpreter was killed"
                    " and its state is lost"
                )
            elif died:
                how = (
                    f"killed by signal {sig}"
                    if sig is not None
                    else (f"exit code {exit_code}" if exit_code is not None else "unknown status")
                )
                name = "InterpreterDied"
                value = (
                    f"the interpreter process died ({how}); its state is lost and the next"
                    " call starts a fresh one"
                )
            else:
                name = "InterpreterDied"
                value = "the interpreter did not stop after an interrupt and was killed"
            result = {
                "type": "result",
                "value": None,
                "error": {"name": name, "value": value, "traceback": ""},
            }
        if client_alive:
            frame = {"type": "result", "value": result.get("value"), "error": result.get("error")}
            try:
                data = protocol.encode_frame(frame)
            except protocol.ProtocolError as exc:  # say, a repr too large for one header
                error = {"name": "ValueError", "value": str(exc), "traceback": ""}
                data = protocol.encode_frame({"type": "result", "value": None, "error": error})
            conn.sendall(data)


class MainCommand:
    """The sandbox's main command: started once, output journaled, survives client disconnects.

    A dedicated reader thread moves the process's stdout/stderr into an in-memory journal of
    records `(seq, stream, bytes)`, so output is kept while no host is attached and any number of
    `attach` clients can replay it and follow it live. The oldest records are dropped once the
    kept bytes exceed `limit`. When the process has ended (plus EXIT_GRACE for late output) an
    exit record with the next seq is appended. Nothing here is tied to a client connection.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.lock = threading.Lock()
        self.pid: int | None = None
        self._records: list[tuple[int, str, bytes]] = []
        self._head = 0  # index of the first kept record in `_records`
        self._kept_bytes = 0
        self.first_kept = 1  # seq of the oldest record still kept (last_seq + 1 if none)
        self.last_seq = 0
        self.exit: dict[str, Any] | None = None  # the exit record once ended
        self._waiters: set[int] = set()  # write ends of attachers' wake pipes

    # -- writer side (the reader thread, or the spawn-failure path) ---------------------------

    def _wake(self) -> None:
        """Under `lock`: poke every attacher (a full pipe means it is awake already)."""
        for fd in self._waiters:
            with contextlib.suppress(OSError):
                os.write(fd, b"x")

    def append(self, stream: str, data: bytes) -> None:
        if not data:
            return
        with self.lock:
            self.last_seq += 1
            self._records.append((self.last_seq, stream, data))
            self._kept_bytes += len(data)
            while self._kept_bytes > self.limit and self._head < len(self._records):
                self._kept_bytes -= len(self._records[self._head][2])
                self._head += 1
            if self._head > 64 and self._head * 2 > len(self._records):
                del self._records[: self._head]
                self._head = 0
            kept = len(self._records) - self._head
            self.first_kept = self.last_seq + 1 - kept
            self._wake()

    def finish(self, exit_code: int | None, sig: int | None) -> None:
        with self.lock:
            if self.exit is not None:
                return
            self.last_seq += 1
            self.exit = {
                "type": "exit",
                "seq": self.last_seq,
                "exit_code": exit_code,
                "signal": sig,
            }
            self._wake()

    def pump(self, child: Child) -> None:
        """Reader thread body: journal the child's output until it ended, then the exit."""
        exit_code: int | None = None
        sig: int | None = None
        try:
            proc = child.proc
            assert proc.stdout is not None and proc.stderr is not None
            sel = selectors.DefaultSelector()
            try:
                open_outs = 0
                for stream, kind in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
                    os.set_blocking(stream.fileno(), False)
                    sel.register(stream.fileno(), selectors.EVENT_READ, kind)
                    open_outs += 1
                sel.register(child.exit_fd, selectors.EVENT_READ, "exit")
                exited_at: float | None = None
                while True:
                    now = time.monotonic()
                    if exited_at is not None and (open_outs == 0 or now - exited_at >= EXIT_GRACE):
                        break
                    wait = None if exited_at is None else max(0.0, exited_at + EXIT_GRACE - now)
                    for key, _ in sel.select(wait):
                        if key.data == "exit":
                            sel.unregister(child.exit_fd)
                            exited_at = time.monotonic()
                            continue
                        try:
                            data = os.read(key.fd, protocol.CHUNK_SIZE)
                        except (BlockingIOError, InterruptedError):
                            continue
                        if not data:
                            sel.unregister(key.fd)
                            open_outs -= 1
                            continue
                        self.append(key.data, data)
            finally:
                sel.close()
            child.exited.wait()
            exit_code, sig = _returncode_fields(proc.returncode)
        except Exception as exc:
            log(f"the main command's reader failed: {type(exc).__name__}: {exc}")
            child.kill_group()
            child.exited.wait()
            exit_code, sig = _returncode_fields(child.proc.returncode)
        finally:
            self.finish(exit_code, sig)
            child.close()

    # -- reader side ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self.lock:
            ended = self.exit
            return {
                "type": "main",
                "started": True,
                "pid": self.pid,
                "running": ended is None,
                "exit_code": ended["exit_code"] if ended else None,
                "signal": ended["signal"] if ended else None,
                "last_seq": self.last_seq,
            }

    def _next(self, cursor: int) -> tuple[int | None, list[tuple[int, str, bytes]], Any]:
        """Under `lock`: (gap first seq or None, records after cursor, exit record or None)."""
        gap = self.first_kept if cursor + 1 < self.first_kept else None
        start = max(cursor + 1, self.first_kept)
        index = self._head + (start - self.first_kept)
        batch: list[tuple[int, str, bytes]] = []
        size = 0
        while index < len(self._records) and size < ATTACH_BATCH:
            batch.append(self._records[index])
            size += len(self._records[index][2])
            index += 1
        return gap, batch, self.exit

    def attach(self, conn: socket.socket, after: int) -> None:
        """Replay records with seq > after, follow live, end with the exit frame."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        sel = selectors.DefaultSelector()
        with self.lock:
            self._waiters.add(wake_w)
        try:
            sel.register(conn, selectors.EVENT_READ, "client")
            sel.register(wake_r, selectors.EVENT_READ, "wake")
            cursor = after
            while True:
                with self.lock:
                    gap, batch, ended = self._next(cursor)
                if gap is not None:
                    protocol.send_frame(conn, {"type": "gap", "first": gap})
                    cursor = gap - 1
                for seq, stream, data in batch:
                    protocol.send_frame(conn, {"type": stream, "seq": seq}, data)
                    cursor = seq
                if batch or gap is not None:
                    continue
                if ended is not None:
                    protocol.send_frame(conn, ended)
                    return
                for key, _ in sel.select():
                    if key.data == "wake":
                        _drain(wake_r)
                    else:
                        try:
                            data = conn.recv(65536)
                        except OSError:
                            data = b""
                        if not data:
                            raise ClientGone()
                        # Nothing is expected from an attached client: ignore it.
        finally:
            with self.lock:
                self._waiters.discard(wake_w)
            sel.close()
            os.close(wake_r)
            os.close(wake_w)


class Agent:
    def __init__(
        self,
        base_env: dict[str, str],
        workdir: str,
        deadline: float | None,
        python: str,
        journal_bytes: int = DEFAULT_JOURNAL_BYTES,
    ) -> None:
        self.base_env = base_env
        self.workdir = workdir
        self.deadline = deadline
        self.python = python
        self.lock = threading.Lock()  # guards spawning and `children`
        self.child_setup = _child_setup if _oom_protected() else None
        self.children: dict[int, Child] = {}
        self.contexts: dict[str, Interpreter] = {}
        self.contexts_lock = threading.Lock()
        self.stopping = False
        self.stop_reason: str | None = None
        self.journal_bytes = journal_bytes
        self.main: MainCommand | None = None
        self.main_lock = threading.Lock()  # serializes `main` requests: one main command ever
        self.zygotes: zygote_client.ZygoteKeeper | None = None  # Python's warm zygote
        self._adopting = 0  # forks of the zygote on their way to becoming our children
        self.next_listener: socket.socket | None = None  # Hypnos: serve here from now on
        self._wake_w: int | None = None
        self.ops: dict[str, Callable[[socket.socket, dict[str, Any]], None]] = {
            "ping": self.op_ping,
            "deadline": self.op_deadline,
            "env": self.op_env,
            "signal": self.op_signal,
            "exec": self.op_exec,
            "read": self.op_read,
            "write": self.op_write,
            "list": self.op_list,
            "remove": self.op_remove,
            "run_code": self.op_run_code,
            "main": self.op_main,
            "attach": self.op_attach,
            "main_status": self.op_main_status,
            "park": self.op_park,
            "adopt_listener": self.op_adopt_listener,
        }

    # -- processes ---------------------------------------------------------------------------

    def spawn(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        stdin: int,
        pass_fds: tuple[int, ...] = (),
    ) -> Child:
        """Start a process in its own session; raises OSError like Popen."""
        hand_over = standby(self._wait_child)  # before the child can use up the pids
        try:
            with self.lock:
                if self.stopping:
                    raise RequestError("internal", "the agent is shutting down")
                proc = subprocess.Popen(
                    argv,
                    stdin=stdin,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                    pass_fds=pass_fds,
                    preexec_fn=self.child_setup,
                    bufsize=0,
                )
                child = Child(proc)
                self.children[child.pid] = child
        except BaseException:
            hand_over(None)
            raise
        hand_over(child)
        return child

    @contextlib.contextmanager
    def adopting(self) -> Iterator[None]:
        """While the zygote forks for us: a new orphan may be that fork, do not reap it."""
        with self.lock:
            self._adopting += 1
        try:
            yield
        finally:
            with self.lock:
                self._adopting -= 1

    def adopt(self, pid: int, stdout: int, stderr: int) -> Child:
        """Take a child we did not Popen (a zygote, or a context it forked that was
        re-parented to us) as our own, like `spawn` does; its pipes become ours."""
        hand_over = standby(self._wait_child)
        proc = zygote_client.Adopted(pid, open(stdout, "rb", 0), open(stderr, "rb", 0))  # noqa: SIM115
        with self.lock:
            child = Child(proc)
            self.children[pid] = child
            if self.stopping:  # kill_all may have missed it
                child.kill_group()
        hand_over(child)
        return child

    def warm_command(
        self, argv: list[str], env: dict[str, str], cwd: str, want_stdin: bool
    ) -> Child | None:
        """The zygote, become this `python3 -c` command, when that is faithful."""
        zygotes = self.zygotes
        child = zygotes.take_command(argv, env, cwd, want_stdin) if zygotes else None
        return child if isinstance(child, Child) else None

    def _wait_child(self, child: Child) -> None:
        try:
            child.proc.wait()
        except Exception as exc:
            log(f"waiting for pid {child.pid} failed: {exc!r}")
        finally:
            with self.lock:
                self.children.pop(child.pid, None)
            child.notify_exit()

    def reap_orphans(self) -> bool:
        """Reap exited processes that are not ours. True if an own zombie hides the rest."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return False
            except InterruptedError:
                continue
            if info is None or info.si_pid == 0:
                return False
            pid = info.si_pid
            with self.lock:
                if pid in self.children or self._adopting:
                    return True  # its waiter thread will collect it shortly
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    def _direct_children(self) -> list[int]:
        me = str(os.getpid())
        pids = []
        try:
            names = os.listdir("/proc")
        except OSError:
            return []
        for name in names:
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            fields = data[data.rfind(")") + 2 :].split()
            if len(fields) > 1 and fields[1] == me:
                pids.append(int(name))
        return pids

    def kill_all(self) -> None:
        """Kill every process we own or that was re-parented to us."""
        with self.lock:
            self.stopping = True
            children = list(self.children.values())
        for child in children:
            child.kill_group()
        for pid in self._direct_children():
            for target in (-pid, pid):
                with contextlib.suppress(OSError):
                    os.kill(target, signal.SIGKILL)
        if os.getpid() == 1:
            with contextlib.suppress(OSError):
                os.kill(-1, signal.SIGKILL)  # everything in our pid namespace but us

    # -- serving -----------------------------------------------------------------------------

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stop_reason = signal.Signals(signum).name

    def serve(self, listener: socket.socket) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        self._wake_w = wake_w
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # just wakes us via wake_w
        listener.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ, "accept")
        sel.register(wake_r, selectors.EVENT_READ, "wake")
        hidden = False
        rc = 0
        while self.stop_reason is None:
            wait = 0.05 if hidden else 1.0
            if self.deadline is not None:
                remaining = self.deadline - time.time()
                if remaining <= 0:
                    log("deadline passed: killing everything")
                    rc = EXIT_DEADLINE
                    break
                wait = min(wait, remaining)
            for key, _ in sel.select(wait):
                if key.data == "accept":
                    self._accept(listener)
                else:
                    _drain(wake_r)
            if self.next_listener is not None:  # park / adopt_listener: swap in the loop
                sel.unregister(listener)
                listener.close()
                listener, self.next_listener = self.next_listener, None
                listener.setblocking(False)
                sel.register(listener, selectors.EVENT_READ, "accept")
            hidden = self.reap_orphans()
        if self.stop_reason is not None:
            log(f"received {self.stop_reason}: killing everything")
        self.kill_all()
        sel.close()
        return rc

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log(f"accept failed: {exc}")
                return
            conn.setblocking(True)
            try:
                threading.Thread(target=self.handle, args=(conn,), daemon=True).start()
            except RuntimeError as exc:  # out of pids/memory: refuse this one, stay alive
                log(f"cannot serve a connection: {exc}")
                conn.close()

    def handle(self, conn: socket.socket) -> None:
        op: object = None
        try:
            conn.settimeout(REQUEST_TIMEOUT)  # do not keep a thread forever for a silent client
            try:
                frame = protocol.recv_frame(conn)
            except protocol.ProtocolError as exc:
                raise RequestError("invalid", str(exc)) from None
            except OSError:
                return
            if frame is None:
                return
            conn.settimeout(None)
            header = frame[0]
            op = header.get("op")
            handler = self.ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise RequestError("invalid", f"unknown op {op!r}")
            handler(conn, header)
        except RequestError as exc:
            self._send_error(conn, exc.code, exc.message)
        except (ClientGone, BrokenPipeError, ConnectionResetError):
            pass
        except protocol.ProtocolError as exc:
            log(f"protocol error in {op!r}: {exc}")
            self._send_error(conn, "invalid", str(exc))
        except Exception as exc:
            log(f"internal error in {op!r}: {type(exc).__name__}: {exc}")
            self._send_error(conn, "internal", f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    @staticmethod
    def _send_error(conn: socket.socket, code: str, message: str) -> None:
        with contextlib.suppress(OSError):
            protocol.send_frame(conn, {"type": "error", "code": code, "message": message})

    # -- request helpers ---------------------------------------------------------------------

    def _path(self, req: dict[str, Any], key: str = "path") -> str:
        value = req.get(key)
        if not isinstance(value, str) or not value or "\0" in value:
            raise RequestError("invalid", f"{key} must be a non-empty string")
        return os.path.join(self.workdir, value)

    def _env(self, value: object) -> dict[str, str]:
        env = dict(self.base_env)
        if value is None:
            return env
        if not isinstance(value, dict):
            raise RequestError("invalid", "env must be an object of strings")
        for k, v in value.items():
            if not isinstance(k, str) or not k or "=" in k or "\0" in k:
                raise RequestError("invalid", f"invalid environment variable name {k!r}")
            if v is None:
                env.pop(k, None)
            elif isinstance(v, str) and "\0" not in v:
                env[k] = v
            else:
                raise RequestError("invalid", f"environment variable {k} must be a string")
        return env

    def _cwd(self, value: object) -> str:
        if value is None:
            return self.workdir
        if not isinstance(value, str) or not value or "\0" in value:
            raise RequestError("invalid", "cwd must be a non-empty string")
        cwd = os.path.join(self.workdir, value)
        if not os.path.isdir(cwd):
            raise RequestError("invalid", f"cwd {cwd}: no such directory")
        return cwd

    @staticmethod
    def _timeout(value: object) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise RequestError("invalid", "timeout must be a positive number or null")
        return float(value)

    # -- ops ---------------------------------------------------------------------------------

    def op_ping(self, conn: socket.socket, req: dict[str, Any]) -> None:
        header = {"type": "pong", "version": protocol.PROTOCOL_VERSION, "pid": os.getpid()}
        header["zygote"] = self._zygote_state()
        protocol.send_frame(conn, header)

    def _zygote_state(self) -> str:
        """off | starting | warm (its pre-imports done) | failed: a microVM template is
        saved once it is warm, so every clone starts with the imports done."""
        keeper = self.zygotes
        if keeper is None:
            return "off"
        with keeper.cond:
            if keeper.warm is not None and keeper.warm.info is not None:
                return "warm"
            return "failed" if keeper.failures and not keeper.starting else "starting"

    def _swap_listener(self, new: socket.socket) -> None:
        new.set_inheritable(False)
        self.next_listener = new
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"L")

    def op_park(self, conn: socket.socket, req: dict[str, Any]) -> None:
        """Hibernation on runc: CRIU cannot save the host's listening socket we serve on, so
        serve on an abstract socket of our own network namespace until `adopt_listener`."""
        name = req.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= 64 or "\0" in name:
            raise RequestError("invalid", "park needs a socket name")
        parked = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            parked.bind("\0" + name)
            parked.listen(16)
        except OSError as exc:
            parked.close()
            raise RequestError("invalid", f"cannot listen on @{name}: {exc}") from None
        self._swap_listener(parked)
        protocol.send_frame(conn, {"type": "ok"})

    def op_adopt_listener(self, conn: socket.socket, req: dict[str, Any]) -> None:
        """Serve on the listening socket passed with this request (SCM_RIGHTS), from the host
        only: a process of the sandbox sees its own pid, the host's is 0 here."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        if struct.unpack("3i", creds)[0] != 0:
            raise RequestError("permission", "only the host hands over a listener")
        _, ancdata, _, _ = conn.recvmsg(1, socket.CMSG_SPACE(4))
        fds = [
            int.from_bytes(data[:4], sys.byteorder)
            for level, kind, data in ancdata
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(data) >= 4
        ]
        if len(fds) != 1:
            raise RequestError("invalid", "adopt_listener needs one file descriptor")
        new = socket.socket(fileno=fds[0])
        if not new.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            new.close()
            raise RequestError("invalid", "the descriptor is not a listening socket")
        self._swap_listener(new)
        protocol.send_frame(conn, {"type": "ok"})

    def op_deadline(self, conn: socket.socket, req: dict[str, Any]) -> None:
        """Move the backstop deadline (the host extended or shortened the sandbox's timeout)."""
        value = req.get("deadline")
        if value is not None and not isinstance(value, (int, float)):
            raise RequestError("invalid", "deadline must be epoch seconds or null")
        self.deadline = float(value) if value is not None else None
        protocol.send_frame(conn, {"type": "ok"})

    def op_env(self, conn: socket.socket, req: dict[str, Any]) -> None:
        """Replace the environment later interpreters and commands start from (a sandbox
        taken from a warm pool gets its request's environment this way)."""
        env = req.get("env")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and "\0" not in k + v and "=" not in k
            for k, v in env.items()
        ):
            raise RequestError("invalid", "env must map names to strings")
        self.base_env = dict(env)
        if self.zygotes is not None:
            self.zygotes.set_env(self.base_env)
        with self.contexts_lock:  # interpreters started before (a pool's warm-up) are stale
            stale = list(self.contexts.values())
            self.contexts.clear()
        for interp in stale:
            interp.discard()
        protocol.send_frame(conn, {"type": "ok"})

    def op_signal(self, conn: socket.socket, req: dict[str, Any]) -> None:
        """Send a signal to every live process descended from us (never to ourselves, nor to
        processes a runtime started beside us, like gVisor's relays): graceful termination
        sends SIGTERM, then signal 0 to count what is left. Answers that count."""
        sig = req.get("signal")
        if isinstance(sig, bool) or not isinstance(sig, int) or not 0 <= sig < signal.NSIG:
            raise RequestError("invalid", "signal must be a signal number")
        alive = 0
        for pid in self._descendants():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
                alive += 1
        protocol.send_frame(conn, {"type": "ok", "processes": alive})

    def _descendants(self) -> list[int]:
        """Live (not zombie) processes whose ancestry leads to us."""
        parents: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            fields = data[data.rfind(")") + 2 :].split()
            if len(fields) > 1 and fields[0] != "Z":
                parents[int(name)] = int(fields[1])
        me = os.getpid()
        found = []
        for pid in parents:
            ancestor, hops = parents[pid], 0
            while ancestor != me and ancestor in parents and hops < len(parents):
                ancestor, hops = parents[ancestor], hops + 1
            if ancestor == me and pid != me:
                found.append(pid)
        return found

    @staticmethod
    def _argv(req: dict[str, Any]) -> list[str]:
        argv = req.get("argv")
        if (
            not isinstance(argv, list)
            or not argv
            or not all(isinstance(a, str) and "\0" not in a for a in argv)
        ):
            raise RequestError("invalid", "argv must be a non-empty list of strings")
        return argv

    @staticmethod
    def _spawn_failure(argv: list[str], exc: OSError) -> tuple[int, bytes]:
        """Exit code and stderr text for a command that could not be started (like a shell)."""
        if isinstance(exc, FileNotFoundError):
            exit_code, message = 127, "command not found"
        else:
            exit_code, message = 126, (exc.strerror or str(exc)).lower()
        return exit_code, f"tartarus: {argv[0]}: {message}\n".encode()

    def op_exec(self, conn: socket.socket, req: dict[str, Any]) -> None:
        argv = self._argv(req)
        env = self._env(req.get("env"))
        cwd = self._cwd(req.get("cwd"))
        timeout = self._timeout(req.get("timeout"))
        want_stdin = bool(req.get("stdin"))
        stdin = subprocess.PIPE if want_stdin else subprocess.DEVNULL
        child = self.warm_command(argv, env, cwd, want_stdin)
        try:
            if child is None:
                child = self.spawn(argv, env=env, cwd=cwd, stdin=stdin)
        except OSError as exc:
            if exc.filename == cwd:
                raise os_error(exc, cwd) from None
            exit_code, text = self._spawn_failure(argv, exc)
            protocol.send_frame(conn, {"type": "stderr"}, text)
            protocol.send_frame(
                conn, {"type": "exit", "exit_code": exit_code, "signal": None, "timed_out": False}
            )
            return
        try:
            protocol.send_frame(conn, {"type": "started", "pid": child.pid})
            exit_frame = self._pump_exec(conn, child, timeout, want_stdin)
        except BaseException:
            child.kill_group()
            raise
        finally:
            child.exited.wait()
            child.close()
        protocol.send_frame(conn, exit_frame)

    def _pump_exec(
        self, conn: socket.socket, child: Child, timeout: float | None, want_stdin: bool
    ) -> dict[str, Any]:
        """Stream output and stdin until the process exits; return the exit frame."""
        proc = child.proc
        assert proc.stdout is not None and proc.stderr is not None
        sel = selectors.DefaultSelector()
        open_outs = 0
        for stream, kind in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            os.set_blocking(stream.fileno(), False)
            sel.register(stream.fileno(), selectors.EVENT_READ, kind)
            open_outs += 1
        sel.register(child.exit_fd, selectors.EVENT_READ, "exit")
        sel.register(conn, selectors.EVENT_READ, "client")
        client_registered = True
        stdin_fd: int | None = None
        if want_stdin and proc.stdin is not None:
            stdin_fd = proc.stdin.fileno()
            os.set_blocking(stdin_fd, False)
        stdin_registered = False
        pending = bytearray()
        stdin_eof = False
        decoder = protocol.FrameDecoder()
        deadline = time.monotonic() + timeout if timeout else None
        timed_out = False
        exited_at: float | None = None

        def close_stdin() -> None:
            nonlocal stdin_fd, stdin_registered
            if stdin_fd is not None:
                if stdin_registered:
                    sel.unregister(stdin_fd)
                    stdin_registered = False
                assert proc.stdin is not None
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                stdin_fd = None
            pending.clear()

        try:
            while True:
                now = time.monotonic()
                if exited_at is not None and (open_outs == 0 or now - exited_at >= EXIT_GRACE):
                    break
                if deadline is not None and exited_at is None and now >= deadline:
                    timed_out = True
                    child.kill_group(signal.SIGKILL)
                    deadline = None
                waits = []
                if deadline is not None and not timed_out:
                    waits.append(deadline - now)
                if exited_at is not None:
                    waits.append(exited_at + EXIT_GRACE - now)
                for key, _mask in sel.select(max(0.0, min(waits)) if waits else None):
                    tag = key.data
                    if tag in ("stdout", "stderr"):
                        try:
                            data = os.read(key.fd, protocol.CHUNK_SIZE)
                        except (BlockingIOError, InterruptedError):
                            continue
                        if not data:
                            sel.unregister(key.fd)
                            open_outs -= 1
                            continue
                        protocol.send_frame(conn, {"type": tag}, data)
                    elif tag == "exit":
                        sel.unregister(child.exit_fd)
                        exited_at = time.monotonic()
                        close_stdin()
                    elif tag == "client":
                        data = conn.recv(65536)
                        if not data:
                            raise ClientGone()
                        for header, body in decoder.feed(data):
                            ftype = header.get("type")
                            if ftype == "stdin":
                                if stdin_fd is not None and not stdin_eof:
                                    pending += body
                            elif ftype == "stdin_eof":
                                stdin_eof = True
                            elif ftype == "signal":
                                sig = header.get("signal")
                                if isinstance(sig, int) and 0 < sig < 65:
                                    child.kill_group(sig)
                                else:
                                    log(f"ignoring invalid signal {sig!r}")
                            else:
                                log(f"ignoring unexpected frame {ftype!r} during exec")
                    elif tag == "stdin" and stdin_fd is not None:
                        try:
                            n = os.write(stdin_fd, bytes(pending[:65536]))
                            del pending[:n]
                        except (BlockingIOError, InterruptedError):
                            pass
                        except OSError:  # the child closed its stdin
                            close_stdin()
                # Keep the stdin pipe and the client registrations in step with the buffer.
                if stdin_fd is not None:
                    if pending and not stdin_registered:
                        sel.register(stdin_fd, selectors.EVENT_WRITE, "stdin")
                        stdin_registered = True
                    elif not pending and stdin_registered:
                        sel.unregister(stdin_fd)
                        stdin_registered = False
                    if not pending and stdin_eof:
                        close_stdin()
                if len(pending) > STDIN_HIGH_WATER and client_registered:
                    sel.unregister(conn)
                    client_registered = False
                elif len(pending) <= STDIN_HIGH_WATER and not client_registered:
                    sel.register(conn, selectors.EVENT_READ, "client")
                    client_registered = True
        finally:
            sel.close()
        child.exited.wait()
        exit_code, sig = _returncode_fields(proc.returncode)
        return {
            "type": "exit",
            "exit_code": exit_code,
            "signal": sig,
            "timed_out": timed_out and sig is not None,
        }

    def op_main(self, conn: socket.socket, req: dict[str, Any]) -> None:
        """Start the main command once, detached from this connection; answer `started`."""
        argv = self._argv(req)
        env = self._env(req.get("env"))
        cwd = self._cwd(req.get("cwd"))
        if req.get("stdin"):
            raise RequestError("invalid", "the main command cannot take stdin")
        with self.main_lock:
            if self.main is not None:
                raise RequestError("invalid", "the main command was already started")
            main = MainCommand(self.journal_bytes)
            pump = standby(main.pump)  # its reader exists before the command can fork
            try:
                child = self.warm_command(argv, env, cwd, False)
                if child is None:
                    child = self.spawn(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL)
            except BaseException as exc:
                pump(None)
                if not isinstance(exc, OSError):
                    raise
                if exc.filename == cwd:
                    raise os_error(exc, cwd) from None
                exit_code, text = self._spawn_failure(argv, exc)
                main.append("stderr", text)
                main.finish(exit_code, None)
                self.main = main
            else:
                main.pid = child.pid
                self.main = main
                pump(child)
        protocol.send_frame(conn, {"type": "started", "pid": main.pid})

    def op_attach(self, conn: socket.socket, req: dict[str, Any]) -> None:
        after = req.get("after", 0)
        if after is None:
            after = 0
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise RequestError("invalid", "after must be a non-negative integer")
        main = self.main
        if main is None:
            raise RequestError("not_found", "no main command was started")
        main.attach(conn, after)

    def op_main_status(self, conn: socket.socket, req: dict[str, Any]) -> None:
        main = self.main
        if main is None:
            status: dict[str, Any] = {
                "type": "main",
                "started": False,
                "pid": None,
                "running": False,
                "exit_code": None,
                "signal": None,
                "last_seq": 0,
            }
        else:
            status = main.status()
        protocol.send_frame(conn, status)

    def op_read(self, conn: socket.socket, req: dict[str, Any]) -> None:
        path = self._path(req)
        try:
            f = open(path, "rb")  # noqa: SIM115  (the open error must be told apart)
        except OSError as exc:
            raise os_error(exc, path) from None
        size = 0
        with f:
            while True:
                try:
                    data = f.read(FILE_CHUNK)
                except OSError as exc:
                    raise os_error(exc, path) from None
                if not data:
                    break
                size += len(data)
                protocol.send_frame(conn, {"type": "data"}, data)
        protocol.send_frame(conn, {"type": "end", "size": size})

    def op_write(self, conn: socket.socket, req: dict[str, Any]) -> None:
        path = self._path(req)
        mode = req.get("mode")
        if mode is not None and (
            isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777
        ):
            raise RequestError("invalid", "mode must be an integer between 0 and 0o7777")
        append = bool(req.get("append"))
        failure: RequestError | None = None
        fd = -1
        tmp: str | None = None
        size = 0
        try:
            parent = os.path.dirname(path) or "."
            os.makedirs(parent, exist_ok=True)
            if append:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            else:
                keep_mode = 0o644
                try:
                    st = os.stat(path)
                    if stat.S_ISDIR(st.st_mode):
                        raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
                    keep_mode = stat.S_IMODE(st.st_mode)
                except FileNotFoundError:
                    pass
                import tempfile  # here: 2.5 ms and 0.5 MiB the agent need not pay at start

                fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tartarus-", suffix=".part")
                os.fchmod(fd, keep_mode if mode is None else mode)
        except OSError as exc:
            failure = os_error(exc, path)
        try:
            # Always consume the whole upload so the client can read our answer.
            while True:
                frame = protocol.recv_frame(conn)
                if frame is None:
                    raise ClientGone()
                header, body = frame
                kind = header.get("type")
                if kind == "end":
                    break
                if kind != "data":
                    raise RequestError("invalid", f"unexpected frame {kind!r} during write")
                if failure is None and body:
                    try:
                        view = memoryview(body)
                        while view:
                            n = os.write(fd, view)
                            view = view[n:]
                        size += len(body)
                    except OSError as exc:
                        failure = os_error(exc, path)
            if failure is not None:
                raise failure
            if append and mode is not None:
                os.fchmod(fd, mode)
            os.close(fd)
            fd = -1
            if tmp is not None:
                os.replace(tmp, path)
                tmp = None
        except OSError as exc:
            raise os_error(exc, path) from None
        finally:
            if fd >= 0:
                os.close(fd)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        protocol.send_frame(conn, {"type": "ok", "size": size})

    def op_list(self, conn: socket.socket, req: dict[str, Any]) -> None:
        path = self._path(req)
        entries = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # vanished meanwhile
                    if stat.S_ISLNK(st.st_mode):
                        kind = "symlink"
                    elif stat.S_ISDIR(st.st_mode):
                        kind = "dir"
                    elif stat.S_ISREG(st.st_mode):
                        kind = "file"
                    else:
                        kind = "other"
                    entries.append(
                        {
                            "name": entry.name,
                            "type": kind,
                            "size": st.st_size,
                            "mode": stat.S_IMODE(st.st_mode),
                            "mtime": st.st_mtime,
                        }
                    )
        except OSError as exc:
            raise os_error(exc, path) from None
        entries.sort(key=lambda e: str(e["name"]))
        protocol.send_frame(conn, {"type": "entries", "entries": entries})

    def op_remove(self, conn: socket.socket, req: dict[str, Any]) -> None:
        path = self._path(req)
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                if req.get("recursive"):
                    import shutil

                    shutil.rmtree(path)
                else:
                    os.rmdir(path)
            else:
                os.unlink(path)
        except OSError as exc:
            raise os_error(exc, path) from None
        protocol.send_frame(conn, {"type": "ok"})

    def op_run_code(self, conn: socket.socket, req: dict[str, Any]) -> None:
        code = req.get("code")
        if not isinstance(code, str):
            raise RequestError("invalid", "code must be a string")
        name = req.get("context") or "default"
        if not isinstance(name, str) or len(name) > 128:
            raise RequestError("invalid", "context must be a string of at most 128 characters")
        timeout = self._timeout(req.get("timeout"))
        with self.contexts_lock:
            interp = self.contexts.get(name)
            if interp is None:
                interp = self.contexts[name] = Interpreter(self, name)
        interp.run(conn, code, timeout)


def load_base_env(path: str | None, workdir: str) -> dict[str, str]:
    """The environment every command starts from: our own process environment (what the
    runtime was given), overlaid with the env file, plus PATH/HOME/LANG defaults."""
    env = dict(os.environ)
    if path:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the env file must hold a JSON object")
        env.update({str(k): str(v) for k, v in data.items()})
    env.setdefault("PATH", DEFAULT_PATH)
    if "HOME" not in env:
        try:
            env["HOME"] = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            env["HOME"] = workdir
    env.setdefault("LANG", "C.UTF-8")
    return env


def _become_subreaper() -> bool:
    """Outside a pid namespace (tests, some VMs) still collect orphaned grandchildren.
    True if orphans come to us (then forks of the zygote can become our children)."""
    if os.getpid() == 1:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        return False


class Options:
    """The command line (see the module docstring): --fd (an already listening AF_UNIX
    socket) or --listen (bind this path); --deadline (epoch seconds: kill all, exit 124);
    --env-file (JSON object: the base environment); --workdir (default cwd of commands);
    --journal-bytes (main command output kept for attaching clients); --preimport (modules
    the zygote imports: a,b.c). Parsed by hand: argparse would cost every sandbox's first
    request ~5 ms (its import and set-up) and the agent 0.3 MiB."""

    TYPES: dict[str, Callable[[str], object]] = {
        "--fd": int,
        "--listen": str,
        "--deadline": float,
        "--env-file": str,
        "--workdir": str,
        "--journal-bytes": int,
        "--preimport": str,
    }
    USAGE = (
        "usage: tartarus-agent (--fd FD | --listen PATH) [--deadline EPOCH] [--env-file PATH]"
        " [--workdir DIR] [--journal-bytes N] [--preimport MOD,MOD...]"
    )

    def __init__(self, argv: list[str]) -> None:
        """Raises ValueError saying what is wrong."""
        self.fd: int | None = None
        self.listen: str | None = None
        self.deadline: float | None = None
        self.env_file: str | None = None
        self.workdir: str | None = None
        self.journal_bytes = DEFAULT_JOURNAL_BYTES
        self.preimport = ""
        i = 0
        while i < len(argv):
            key, eq, value = argv[i].partition("=")
            convert = self.TYPES.get(key)
            if convert is None:
                raise ValueError(f"unrecognized argument {argv[i]!r}")
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"argument {key}: expected a value")
                i += 1
                value = argv[i]
            try:
                setattr(self, key[2:].replace("-", "_"), convert(value))
            except ValueError:
                raise ValueError(f"argument {key}: invalid value {value!r}") from None
            i += 1
        if (self.fd is None) == (self.listen is None):
            raise ValueError("exactly one of the arguments --fd --listen is required")


def main(argv: list[str] | None = None, early: zygote_start.Spawned | None = None) -> int:
    """Serve until the sandbox ends; `early` is a zygote start.py already started."""
    try:
        args = Options(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        sys.stderr.write(f"{Options.USAGE}\ntartarus-agent: error: {exc}\n")
        return 2

    workdir = os.path.abspath(args.workdir or os.getcwd())
    try:
        base_env = load_base_env(args.env_file, workdir)
    except (OSError, ValueError) as exc:
        log(f"cannot load the env file: {exc}")
        return 2
    if args.fd is not None:
        listener = socket.socket(fileno=args.fd)
    elif args.listen is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.listen)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(args.listen)
        listener.listen(128)
    listener.set_inheritable(False)
    reaper = _become_subreaper()
    agent = Agent(base_env, workdir, args.deadline, sys.executable or "python3", args.journal_bytes)
    preimport, bad = zygote_start.module_names(args.preimport)
    for name in bad:
        log(f"ignoring --preimport {name!r}: not a module name")
    agent.zygotes = zygote_client.ZygoteKeeper(
        agent,
        python=agent.python,
        zygote_path=ZYGOTE_PATH,
        preimport=preimport,
        env=base_env,
        workdir=workdir,
        can_fork=reaper,
        log=log,
    )
    agent.zygotes.start(early or EARLY_ZYGOTE)  # in the background: we serve at once
    rc = agent.serve(listener)
    listener.close()
    if args.listen:
        with contextlib.suppress(OSError):
            os.unlink(args.listen)
    return rc


def run(early: zygote_start.Spawned | None = None) -> None:
    """main() as the process's whole life (start.py, or this file run as a script)."""
    code = main(early=early)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)  # do not wait for connection threads


if __name__ == "__main__":
    run()
