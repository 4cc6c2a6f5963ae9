"""The zygote: a `python3` the guest agent starts ahead of demand, so Python code starts warm.

Why: a sandbox's first `python3 -c` used to pay a whole interpreter start-up (and `import
pandas` another 300 ms) at request time. The agent starts this program early, with the same
interpreter and flags a plain `python3` has, lets it import the template's `preimport`
modules, and then uses it in one of two ways:

* `run_code` contexts are *forked* from it (a double fork, so the context is re-parented to
  the agent, which reaps it and reads its exit status like any child). Contexts share the
  zygote's pages copy-on-write and find the pre-imported modules already in `sys.modules`.
* a faithful `python3 -c CODE ARGS...` exec *consumes* it: this very process becomes the
  command (the agent then starts a replacement). It is not forked because a fork cannot be
  faithful: the string-hash secret (PYTHONHASHSEED) is fixed at interpreter start, so every
  fork of one zygote would hash alike, and ASLR and C-level random state would be shared
  too. A consumed zygote is a process that merely started earlier: its own hash secret,
  address layout and seeds. What still differs from an exec'd `python3 -c` (documented, not
  hidden): /proc/PID/cmdline shows this bootstrap, the process started (and used CPU time)
  earlier, the pre-imported modules are in `sys.modules`, the user's code runs four frames
  deeper (tracebacks are trimmed to the user's frames, as Python prints them), and
  `sys.stdin.seekable()` keeps the value of the /dev/null it started with when stdin is a pipe.
  Contexts, being forks, share the zygote's hash secret; `random` (at-fork hook) and numpy's
  global generator are re-seeded in each.

It runs as `python3 -c BOOT zygote.py CTL_FD WORKDIR PREIMPORTS` (see zygote_start.py), where
BOOT compiles this file (in a short-lived fork) and runs it in a dict of its own, so
`__main__` stays exactly as `python3 -c` leaves it. Everything the zygote itself needs
(`_socket`, `gc`, `_ast`) is imported after the pre-imports and dropped from `sys.modules`
before user code runs: with no pre-imports, a consumed zygote's `sys.modules` is that of
`python3 -c pass`. Output of the pre-imports goes to /dev/null (fds 1 and 2 are the agent's
pipes, kept for the command that consumes the zygote).

Control messages on CTL_FD (an AF_UNIX stream socket): a 4-byte big-endian length, then
NUL-separated fields; file descriptors ride on the first bytes (SCM_RIGHTS).

  zygote -> agent, once ready:   R  (key value)...
  agent -> zygote:  C cwd executable argv0 code nargs args... env-key env-value...  [stdin]
                    F  with fds [ctl, stdout, stderr]: fork a run_code context
  zygote -> agent:  K (consumed: from now on this is the command)  |  P pid  |  E reason

Stdlib only, Python >= 3.9, and deliberately no `from __future__` (that would import a module).
"""

import os
import sys

# Taken before this file imports anything: what `python3 -c` has loaded and how `__main__` looks.
BASELINE = frozenset(sys.modules)
MAIN = sys.modules["__main__"]
PRISTINE = dict(MAIN.__dict__)
THIS_FILE = sys.argv[1] if len(sys.argv) > 1 else __file__
HERE = os.path.dirname(os.path.abspath(THIS_FILE))
MAX_MESSAGE = 16 << 20


def settle() -> None:
    """What os.posix_spawn could not do for the agent: a session of our own (like every
    command the agent starts), no OOM protection, the working directory."""
    os.setsid()
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("0")
    except OSError:
        pass
    if len(sys.argv) > 3:
        os.chdir(sys.argv[3])


class Channel:
    """The control socket: length-prefixed messages of NUL-separated fields, fds attached."""

    def __init__(self, fd: int) -> None:
        import _socket

        self.sock = _socket.socket(fileno=fd)
        self.cmsg_space = _socket.CMSG_SPACE(4 * 8)
        self.sol_socket = _socket.SOL_SOCKET
        self.scm_rights = _socket.SCM_RIGHTS
        self.cloexec = getattr(_socket, "MSG_CMSG_CLOEXEC", 0)

    def recv(self) -> "tuple[list[bytes], list[int]]":
        """One message and the fds that came with it; ([], []) at EOF."""
        data, ancdata, _flags, _addr = self.sock.recvmsg(65536, self.cmsg_space, self.cloexec)
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == self.sol_socket and kind == self.scm_rights:
                usable = len(payload) - len(payload) % 4
                fds += [
                    int.from_bytes(payload[i : i + 4], sys.byteorder, signed=True)
                    for i in range(0, usable, 4)
                ]
        buf = bytearray(data)
        while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
            if len(buf) >= 4 and int.from_bytes(buf[:4], "big") > MAX_MESSAGE:
                return [], fds
            chunk = self.sock.recv(65536)
            if not chunk:
                return [], fds
            buf += chunk
        return bytes(buf[4:]).split(b"\0"), fds

    def send(self, *fields: bytes) -> None:
        payload = b"\0".join(fields)
        self.sock.sendall(len(payload).to_bytes(4, "big") + payload)

    def close(self) -> None:
        self.sock.close()


def preimport(names: "list[str]") -> "list[str]":
    """Import the template's modules with stdout/stderr muted; return what failed, as text."""
    failures: list[str] = []
    if not names:
        return failures
    saved = (os.dup(1), os.dup(2))
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    try:
        for name in names:
            try:
                __import__(name)
            except BaseException as exc:  # a broken module must not take the zygote down
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:  # noqa: SIM105  (no contextlib: one module more in every command)
                stream.flush()
            except Exception:
                pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
    return failures


def ready_fields(failures: "list[str]", loaded: "frozenset[str]") -> "list[bytes]":
    """What the agent needs to judge whether a request can be served faithfully."""
    fields = [b"R", b"pid", b"%d" % os.getpid(), b"executable", os.fsencode(sys.executable)]
    for entry in sys.path:
        fields += [b"path", os.fsencode(entry)]
    site = sys.modules.get("site")
    user_site = getattr(site, "USER_SITE", None)
    if isinstance(user_site, str):
        fields += [b"path", os.fsencode(user_site)]
    for name in sorted({m.partition(".")[0] for m in loaded - BASELINE}):
        fields += [b"module", os.fsencode(name)]
    for text in failures:
        fields += [b"failed", text.replace("\0", " ").encode("utf-8", "backslashreplace")]
    threading = sys.modules.get("threading")
    threads = threading.active_count() if threading is not None else 1
    return [*fields, b"threads", b"%d" % threads]


class Zygote:
    """The ready zygote: waits for the agent's requests (see the module docstring)."""

    def __init__(self, channel: Channel, ours: "frozenset[str]") -> None:
        self.channel = channel
        self.ours = ours  # modules only this program needed

    def serve(self) -> "tuple[str, object]":
        """Answer requests until one turns this process (or a fork of it) into a job."""
        while True:
            fields, fds = self.channel.recv()
            if not fields:
                os._exit(0)  # the agent is gone
            kind = fields[0]
            if kind == b"C":
                job = self.become_command(fields, fds)
                if job is not None:
                    return job
            elif kind == b"F" and len(fds) == 3:
                if self.fork_context(fds) == 0:
                    if len(fields) > 1:  # the agent's environment changed since we started
                        flat = [os.fsdecode(f) for f in fields[1:]]
                        os.environ.clear()
                        for i in range(0, len(flat) - 1, 2):  # no zip(strict=): Python 3.9
                            os.environ[flat[i]] = flat[i + 1]
                    return ("context", fds)
            else:
                for fd in fds:
                    os.close(fd)
                self.channel.send(b"E", b"bad request")

    def become_command(
        self, fields: "list[bytes]", fds: "list[int]"
    ) -> "tuple[str, object] | None":
        cwd, executable, argv0, code = (os.fsdecode(f) for f in fields[1:5])
        nargs = int(fields[5])
        args = [os.fsdecode(a) for a in fields[6 : 6 + nargs]]
        flat = [os.fsdecode(f) for f in fields[6 + nargs :]]
        try:
            os.chdir(cwd)
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            self.channel.send(b"E", os.fsencode(f"cwd {cwd}: {exc.strerror}"))
            return None
        self.channel.send(b"K")
        self.channel.close()
        if fds:
            os.dup2(fds[0], 0)
            for fd in fds:
                os.close(fd)
        os.environ.clear()
        for i in range(0, len(flat) - 1, 2):
            os.environ[flat[i]] = flat[i + 1]
        sys.argv = ["-c", *args]
        if hasattr(sys, "orig_argv"):
            sys.orig_argv = [argv0, "-c", code, *args]
        if executable and executable != sys.executable:
            sys.executable = executable
            sys._base_executable = executable  # type: ignore[attr-defined]
        self.forget()
        return ("command", code)

    def forget(self) -> None:
        """Undo what only the zygote did: its modules, frozen objects, `__main__`."""
        gc = sys.modules.get("gc")
        if gc is not None:
            gc.unfreeze()
        for name in self.ours:
            sys.modules.pop(name, None)
        MAIN.__dict__.clear()
        MAIN.__dict__.update(PRISTINE)

    def fork_context(self, fds: "list[int]") -> int:
        """Double-fork a run_code context; 0 in the context, else its pid (already reported)."""
        r, w = os.pipe()
        try:
            middle = os.fork()
        except OSError as exc:
            os.close(r)
            os.close(w)
            for fd in fds:
                os.close(fd)
            self.channel.send(b"E", os.fsencode(f"fork: {exc.strerror}"))
            return -1
        if middle == 0:  # exits at once, so the context is re-parented to the agent
            worker = False
            try:
                os.close(r)
                pid = os.fork()
                worker = pid == 0
                if not worker:
                    os.write(w, b"%d" % pid)
            except BaseException:
                pass
            if not worker:
                os._exit(0)
            os.close(w)
            self.channel.close()
            return 0
        os.close(w)
        for fd in fds:
            os.close(fd)
        data = b""
        while True:
            chunk = os.read(r, 64)
            if not chunk:
                break
            data += chunk
        os.close(r)
        os.waitpid(middle, 0)  # after this the context is the agent's child
        if data.isdigit():
            self.channel.send(b"P", data)
        else:
            self.channel.send(b"E", b"fork failed")
        return -1


def reseed() -> None:
    """A fork shares the parent's C-level random state; renew the ones Python code sees."""
    numpy_random = sys.modules.get("numpy.random")
    seed = getattr(numpy_random, "seed", None)
    if callable(seed):
        try:  # noqa: SIM105
            seed()
        except Exception:
            pass


def unbuffered_stdio() -> None:
    """Contexts stream output live, like `python3 -u`: text layer straight to the fd."""
    import io

    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        try:  # noqa: SIM105
            old.flush()
        except Exception:
            pass
        raw = io.FileIO(fd, "wb", closefd=False)
        new = io.TextIOWrapper(
            raw,
            encoding=old.encoding,
            errors=old.errors,
            newline="\n",
            line_buffering=False,
            write_through=True,
        )
        setattr(sys, name, new)
        setattr(sys, f"__{name}__", new)


def start_context(fds: "list[int]") -> None:
    ctl, out, err = fds
    os.setsid()
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    reseed()
    unbuffered_stdio()
    path = os.path.join(HERE, "interpreter.py")
    code = globals().get("INTERPRETER")  # compiled by the bootstrap (zygote_start.LOADER)
    if code is None:
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec", 0, True)
    namespace: dict[str, object] = {"__name__": "tartarus_interpreter", "__file__": path}
    exec(code, namespace)
    serve = namespace["serve"]
    assert callable(serve)
    serve(ctl)


def run_command(code: str) -> None:
    """Run `python3 -c CODE` the way Python's own `-c` does (see pymain_run_command)."""
    try:
        compiled = compile(code, "<string>", "exec", 0, True)
        if sys.version_info >= (3, 13):  # `-c` source shows in tracebacks since 3.13
            import linecache

            register = getattr(linecache, "_register_code", None)
            if register is not None:  # keyed by file name in 3.13, by code object since 3.14
                key = "<string>" if sys.version_info < (3, 14) else compiled
                register(key, code, "<string>")
        exec(compiled, MAIN.__dict__)
    except SystemExit:
        raise  # handled by the interpreter exactly as for a real `-c`
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == THIS_FILE:
            tb = tb.tb_next
        exc.__traceback__ = tb
        sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
        if sys.version_info >= (3, 12):
            sys.last_exc = exc
        try:
            sys.excepthook(type(exc), exc, tb)
        except BaseException:
            sys.__excepthook__(type(exc), exc, tb)
        if isinstance(exc, KeyboardInterrupt):
            exit_by_sigint()
        raise SystemExit(1) from None


def exit_by_sigint() -> None:
    """Like Python after an uncaught KeyboardInterrupt: finish up, then die of SIGINT."""
    threading = sys.modules.get("threading")
    if threading is not None:
        try:  # noqa: SIM105
            threading._shutdown()
        except BaseException:
            pass
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105
            stream.flush()
        except BaseException:
            pass
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    os._exit(130)


def main() -> "tuple[str, object]":
    settle()
    ctl_fd = int(sys.argv[2])
    names = [n for n in sys.argv[4].split(",") if n] if len(sys.argv) > 4 else []
    os.set_inheritable(ctl_fd, False)
    failures = preimport(names)
    loaded = frozenset(sys.modules)
    import _ast  # noqa: F401  (each run_code context parses its cells: 0.8 ms saved per context)
    import gc

    channel = Channel(ctl_fd)
    ours = frozenset(sys.modules) - loaded
    if names:
        gc.collect()
        gc.freeze()  # keep forks from dirtying the pre-imported objects' pages
    channel.send(*ready_fields(failures, loaded))
    return Zygote(channel, ours).serve()


_job = main()
if _job[0] == "command":
    run_command(str(_job[1]))
else:
    start_context(list(_job[1]))  # type: ignore[call-overload]
