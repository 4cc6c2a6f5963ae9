"""The agent's side of the zygote (zygote.py): keeping one warm and handing it out.

Why apart from agent.py: the zygote's life cycle (start, readiness, replacement, back-off) is
one concern of its own; when a `python3 -c` may use it is decided in faithful.py.

One zygote per sandbox, for every template, started before the agent's own imports
(zygote_start.py) so it is ready when the first request comes. Without pre-imports it costs
about 3 MiB of private memory (its code pages are the agent's too), which is what turns a
first `python3 -c pass` of ~40 ms into a few ms; starting it only on first use would save that
memory but not the first request's time.

* `take_command` hands the zygote out as the process of a faithful `python3 -c` exec (see
  zygote.py for why it is consumed, not forked); a replacement starts when that command ends,
  or earlier if a request needs one. A request that finds the replacement still starting
  waits for it when there are no pre-imports (it started before a fresh exec would), and
  falls back to a normal exec when there are.
* `fork_context` forks a `run_code` context from it, waiting for it while it starts: a context
  is long-lived and should have the pre-imports. A zygote whose pre-imports started Python
  threads is not forked (a fork keeps only the calling thread): contexts then start afresh.

A zygote that dies or goes stale (a package installed since) is replaced on next use; one that
dies before it was ready backs off (1 s, doubling to 5 min), so a broken pre-import cannot make
the sandbox spin. Whatever goes wrong here means "serve it the normal way", never a failure.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: 2 ms and 0.5 MiB of the agent's
    from typing import IO, Any, Protocol

    from tartarus.guest import faithful, zygote_start

    class ChildLike(Protocol):
        """What the agent's `Child` offers that we use."""

        pid: int
        exited: threading.Event
        proc: Any

        def kill_group(self, sig: int = ...) -> None: ...

        def close(self) -> None: ...

    class Host(Protocol):
        """The agent, as seen from here."""

        stopping: bool

        def adopting(self) -> contextlib.AbstractContextManager[None]: ...

        def adopt(self, pid: int, stdout: int, stderr: int) -> ChildLike: ...
else:
    import faithful
    import zygote_start

COMMAND_WAIT = 2.0  # a `python3 -c` waits this long at most for a starting plain zygote
CONTEXT_WAIT = 60.0  # a run_code context waits this long at most for a starting zygote
READY_TIMEOUT = 300.0  # pre-imports on a loaded machine
REPLY_TIMEOUT = 5.0
MAX_BACKOFF = 300.0


class Adopted:
    """A Popen look-alike for a child we did not start with Popen: a zygote (posix_spawn), or
    a context the zygote forked and that was re-parented to us."""

    def __init__(self, pid: int, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdin: IO[bytes] | None = None
        self.stdout = stdout
        self.stderr = stderr

    def wait(self) -> int:
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:  # not ours after all: nothing to report but "gone"
                self.returncode = 255
        return self.returncode


class Warm:
    """One zygote process and our end of its control socket."""

    def __init__(self, child: ChildLike, ctl: socket.socket, env: dict[str, str]) -> None:
        self.child = child
        self.ctl = ctl
        self.env = env
        self.info: faithful.Info | None = None
        self.dead = False

    @property
    def alive(self) -> bool:
        return not self.dead and not self.child.exited.is_set()

    def send(self, fields: list[bytes], fds: list[int]) -> None:
        payload = b"\0".join(fields)
        data = len(payload).to_bytes(4, "big") + payload
        rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)] if fds else []
        sent = self.ctl.sendmsg([data], ancillary)
        if sent < len(data):
            self.ctl.sendall(data[sent:])

    def recv(self, timeout: float) -> list[bytes] | None:
        """One message as its fields, or None on EOF, timeout or garbage."""
        payload = self.recv_raw(timeout)
        return payload.split(b"\0") if payload is not None else None

    def recv_raw(self, timeout: float) -> bytes | None:
        try:
            self.ctl.settimeout(timeout)
            head = _recv_exactly(self.ctl, 4)
            size = int.from_bytes(head, "big") if head is not None else -1
            if size < 0 or size > 16 << 20:
                return None
            return _recv_exactly(self.ctl, size)
        except OSError:
            return None

    def drain(self) -> None:
        """Drop output nobody asked for (a pre-import's thread, a warning at fork)."""
        for stream in (self.child.proc.stdout, self.child.proc.stderr):
            fd = stream.fileno()
            os.set_blocking(fd, False)
            with contextlib.suppress(OSError):
                while os.read(fd, 1 << 16):
                    pass

    def kill(self) -> None:
        """Kill it; its pipes are closed once the agent has reaped it."""
        self.dead = True
        self.ctl.close()
        self.child.kill_group()
        child = self.child

        def close_when_reaped() -> None:
            child.exited.wait()
            child.close()

        with contextlib.suppress(RuntimeError):  # no thread: leave the fds, not the sandbox
            threading.Thread(target=close_when_reaped, daemon=True).start()


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class ZygoteKeeper:
    """Keeps one zygote warm and hands it out; thread-safe, never raises to its callers."""

    def __init__(
        self,
        host: Host,
        *,
        python: str,
        zygote_path: str,
        preimport: list[str],
        env: dict[str, str],
        workdir: str,
        can_fork: bool,
        log: Callable[[str], None],
    ) -> None:
        self.host = host
        self.python = python
        self.zygote_path = zygote_path
        self.preimport = preimport
        self.env = env
        self.workdir = workdir
        self.can_fork = can_fork  # forked contexts re-parent to us only if we are a reaper
        self.log = log
        self.cond = threading.Condition()  # guards everything below; re-entrant
        self.warm: Warm | None = None
        self.starting = False
        self.failures = 0
        self.not_before = 0.0
        self.code: bytes | None = None  # zygote.py and interpreter.py, as compiled by a zygote

    def set_env(self, env: dict[str, str]) -> None:
        """The environment changed: contexts forked from now on get it (the running zygote
        keeps its own; `python3 -c` takes each request's environment anyway)."""
        with self.cond:
            self.env = dict(env)

    # -- starting ----------------------------------------------------------------------------

    def start(self, early: zygote_start.Spawned | None = None) -> None:
        """Start a zygote in the background unless one is there, starting, or backing off.
        `early`: one already started (by `zygote_start.early`) to take over if it fits."""
        if early is not None and (
            early.env != self.env
            or early.workdir != self.workdir
            or not self._adopt(early, starting=True)
        ):
            early.abandon()
            early = None
        with self.cond:
            if early is None and (
                self.starting
                or (self.warm is not None and self.warm.alive)
                or time.monotonic() < self.not_before
                or self.host.stopping
            ):
                return
            self.starting = True
        try:
            threading.Thread(target=self._start, args=(early,), daemon=True).start()
        except RuntimeError:  # out of pids: try again on next use
            with self.cond:
                self.starting = False

    def _adopt(self, spawned: zygote_start.Spawned, starting: bool = False) -> bool:
        """Make a spawned zygote our child (its status collected like any other's)."""
        try:
            child = self.host.adopt(spawned.pid, spawned.stdout, spawned.stderr)
        except Exception as exc:
            self.log(f"zygote: cannot take over pid {spawned.pid}: {exc}")
            return False
        warm = Warm(child, socket.socket(fileno=spawned.ctl), spawned.env)
        with self.cond:
            self.warm = warm
            self.starting = self.starting or starting
        return True

    def _start(self, early: zygote_start.Spawned | None) -> None:
        try:
            if early is None:
                with self.host.adopting():
                    spawned = zygote_start.spawn(
                        self.python,
                        self.zygote_path,
                        self.preimport,
                        dict(self.env),
                        self.workdir,
                        code=self.code,
                    )
                    if not self._adopt(spawned):
                        spawned.abandon()
                        raise RuntimeError("cannot take over the zygote")
            warm = self.warm
            if warm is None:
                raise RuntimeError("the zygote was discarded while starting")
            payload = warm.recv_raw(READY_TIMEOUT)
            if payload is not None and payload.startswith(b"M\0"):  # its compiled code
                self.code = payload[2:]
                payload = warm.recv_raw(READY_TIMEOUT)
            fields = payload.split(b"\0") if payload is not None else None
            if fields is None or fields[0] != b"R":
                with self.cond:
                    self._discard(warm)
                raise RuntimeError("it ended before it was ready")
            info = faithful.Info(fields)
            for text in info.failed:
                self.log(f"zygote: cannot pre-import {text}")
            with self.cond:
                warm.info = info
                self.failures = 0
        except Exception as exc:
            self.log(f"zygote not available: {exc}")
            with self.cond:
                self.failures += 1
                self.not_before = time.monotonic() + min(MAX_BACKOFF, 2.0 ** (self.failures - 1))
        finally:
            with self.cond:
                self.starting = False
                self.cond.notify_all()

    def _discard(self, warm: Warm) -> None:
        """Under `cond`: kill a zygote we will not use (the agent reaps it)."""
        if self.warm is warm:
            self.warm = None
        warm.kill()

    def _ready(self, wait: float) -> Warm | None:
        """Under `cond`: a live, ready, up-to-date zygote, waiting up to `wait` for one."""
        deadline = time.monotonic() + wait
        while True:
            warm = self.warm
            if warm is not None and not warm.alive:
                self._discard(warm)
                warm = None
            if warm is not None and warm.info is not None:
                if faithful.path_stamps(warm.info.paths) == warm.info.stamps:
                    return warm
                self.log("zygote: the import path changed since it started; starting afresh")
                self._discard(warm)
                warm = None
            if warm is None and not self.starting:
                self.start()  # `cond` is re-entrant
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.starting:
                return None
            self.cond.wait(remaining)

    # -- handing out -------------------------------------------------------------------------

    def take_command(
        self, argv: list[str], env: dict[str, str], cwd: str, want_stdin: bool
    ) -> ChildLike | None:
        """The zygote turned into this `python3 -c` command, or None: exec it normally."""
        if len(argv) < 3 or argv[1] != "-c":
            return None  # most commands: decided before any locking
        try:
            return self._take_command(argv, env, cwd, want_stdin)
        except Exception as exc:
            self.log(f"zygote: {type(exc).__name__}: {exc}")
            return None

    def _take_command(
        self, argv: list[str], env: dict[str, str], cwd: str, want_stdin: bool
    ) -> ChildLike | None:
        with self.cond:
            warm = self._ready(0.0 if self.preimport else COMMAND_WAIT)
            if warm is None or warm.info is None:
                return None
            executable = faithful.command_plan(argv, env, cwd, warm.env, warm.info)
            if executable is None:
                return None
            fields = [b"C", os.fsencode(cwd), os.fsencode(executable), os.fsencode(argv[0])]
            fields += [argv[2].encode("utf-8"), b"%d" % (len(argv) - 3)]
            fields += [os.fsencode(a) for a in argv[3:]]
            for key, value in env.items():
                fields += [os.fsencode(key), os.fsencode(value)]
            reader, writer = os.pipe() if want_stdin else (-1, -1)
            try:
                warm.drain()
                warm.send(fields, [reader] if want_stdin else [])
                reply = warm.recv(REPLY_TIMEOUT)
            except OSError:
                reply = None
            finally:
                if want_stdin:
                    os.close(reader)
            if reply is None or reply[0] != b"K":
                if want_stdin:
                    os.close(writer)
                if reply is None:  # silent or dead: it cannot be trusted any more
                    self._discard(warm)
                    self.start()
                return None
            self.warm = None
            warm.ctl.close()
        if want_stdin:
            warm.child.proc.stdin = open(writer, "wb", buffering=0)  # noqa: SIM115
        self._replace_after(warm.child)
        return warm.child

    def _replace_after(self, child: ChildLike) -> None:
        """Start the next zygote once this command has ended (or a request needs one first):
        started at once, it would take CPU from the very command it is replacing."""

        def replace() -> None:
            child.exited.wait()
            self.start()

        with contextlib.suppress(RuntimeError):  # out of pids: the next request starts one
            threading.Thread(target=replace, daemon=True).start()

    def fork_context(self) -> tuple[ChildLike, socket.socket] | None:
        """A run_code context forked from the zygote (its control socket is ours), or None."""
        if not self.can_fork:
            return None
        try:
            return self._fork_context()
        except Exception as exc:
            self.log(f"zygote: {type(exc).__name__}: {exc}")
            return None

    def _fork_context(self) -> tuple[ChildLike, socket.socket] | None:
        with self.cond:
            for _ in range(2):  # a zygote found dead is replaced, and waited for, once
                warm = self._ready(CONTEXT_WAIT)
                if warm is None or warm.info is None or warm.info.threads > 1:
                    return None
                forked = self._fork(warm)
                if forked is not None:
                    return forked
        return None

    def _fork(self, warm: Warm) -> tuple[ChildLike, socket.socket] | None:
        """Under `cond`: ask `warm` for a context; None if it turned out dead or silent."""
        ours, theirs = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            with self.host.adopting():
                try:
                    warm.drain()
                    env = [] if warm.env == self.env else _flat(self.env)  # changed since
                    warm.send([b"F", *env], [theirs.fileno(), out_w, err_w])
                    reply = warm.recv(REPLY_TIMEOUT)
                except OSError:
                    reply = None
                finally:
                    theirs.close()
                    os.close(out_w)
                    os.close(err_w)
                if reply is None:  # silent or dead: it cannot be trusted any more
                    self._discard(warm)
                    self.start()
                    raise OSError("the zygote did not answer")
                if reply[0] != b"P" or len(reply) < 2:
                    raise OSError(f"the zygote did not fork: {reply!r}")
                child = self.host.adopt(int(reply[1]), out_r, err_r)
        except BaseException as exc:
            ours.close()
            for fd in (out_r, err_r):
                with contextlib.suppress(OSError):
                    os.close(fd)
            if isinstance(exc, OSError) and warm.dead:
                return None
            raise
        return child, ours


def _flat(env: dict[str, str]) -> list[bytes]:
    return [os.fsencode(x) for pair in env.items() for x in pair]
