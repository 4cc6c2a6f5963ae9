"""Starting a zygote process (zygote.py), cheap enough to do before the agent's own imports.

Why a module of its own: a sandbox's first `python3 -c` waits for whichever comes last, the
agent or the zygote, and each needs ~10-25 ms to start. The agent calls `early()` before its
imports (this module needs only `os`, `sys`, `_socket` and `pwd`), so the two start side by
side. `os.posix_spawn` (vfork) costs the agent a fraction of a millisecond at any size, where
a fork of the agent would copy its page tables; the zygote does itself what posix_spawn cannot
(a new session, the OOM score, the working directory).

The zygote is started as `PYTHON -c BOOT zygote.py 3 WORKDIR PREIMPORTS`: fd 3 is its control
socket, stdin is /dev/null, stdout and stderr are pipes to the agent.
"""

from __future__ import annotations

import os
import sys

# The zygote's bootstrap, run in a namespace of its own so `__main__` stays as `-c` leaves it.
# It loads zygote.py and interpreter.py as marshalled code: compiled by an earlier zygote and
# sent by the agent (argument "cached": a message on fd 3), or else compiled in a short-lived
# fork and sent to the agent for the next ones (message "M"). So the compiler's scratch memory
# (1.4 MiB for these files, kept by the allocator as fragmentation) never stays in an idle
# sandbox, and a replacement zygote skips the ~4 ms of compiling. Without a fork (no pids
# left) it compiles in place.
LOADER = """\
import marshal, os, sys
paths = [sys.argv[1], os.path.join(os.path.dirname(sys.argv[1]), "interpreter.py")]
def build():
    code = []
    for path in paths:
        with open(path, "rb") as f:
            code.append(compile(f.read(), path, "exec", 0, True))
    return marshal.dumps(tuple(code))
def read(fd, n):
    data = b""
    while len(data) < n:
        part = os.read(fd, min(n - len(data), 1 << 20))
        if not part:
            break
        data += part
    return data
fd = int(sys.argv[2])
if sys.argv[5:] == ["cached"]:
    data = read(fd, int.from_bytes(read(fd, 4), "big"))
else:
    data = b""
    try:
        r, w = os.pipe()
        pid = os.fork()
    except OSError:
        pid = -1
    if pid == 0:
        try:
            view = memoryview(build())
            while view:
                view = view[os.write(w, view):]
        finally:
            os._exit(0)
    if pid > 0:
        os.close(w)
        data = read(r, 1 << 30)
        os.close(r)
        os.waitpid(pid, 0)
    data = data or build()
    view = memoryview((len(data) + 2).to_bytes(4, "big") + b"M\\0" + data)
    while view:
        view = view[os.write(fd, view):]
    del view
zygote, interpreter = marshal.loads(data)
del data, build, read, paths
exec(zygote, {"__name__": "tartarus_zygote", "INTERPRETER": interpreter})
"""
BOOT = f"exec({LOADER!r},{{'__name__':'tartarus_boot'}})"
CTL_FD = 3
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Spawned:
    """A zygote process just started: our ends of its control socket and output pipes."""

    def __init__(
        self, pid: int, ctl: int, stdout: int, stderr: int, env: dict[str, str], workdir: str
    ) -> None:
        self.pid = pid
        self.ctl = ctl
        self.stdout = stdout
        self.stderr = stderr
        self.env = env
        self.workdir = workdir

    def abandon(self) -> None:
        """Kill it and close our ends (before anyone else took it over)."""
        import contextlib  # only now: this module is imported before anything else

        with contextlib.suppress(OSError):
            os.kill(self.pid, 9)
        for fd in (self.ctl, self.stdout, self.stderr):
            with contextlib.suppress(OSError):
                os.close(fd)


def module_names(value: str) -> tuple[list[str], list[str]]:
    """The --preimport list split into (module names, entries that cannot be module names)."""
    good: list[str] = []
    bad: list[str] = []
    for name in filter(None, value.split(",")):
        (good if all(p.isidentifier() for p in name.split(".")) else bad).append(name)
    return good, bad


def default_env(env: dict[str, str], workdir: str) -> dict[str, str]:
    """`env` completed with the PATH/HOME/LANG every command gets (the agent's base env)."""
    env.setdefault("PATH", DEFAULT_PATH)
    if "HOME" not in env:
        import pwd

        try:
            env["HOME"] = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            env["HOME"] = workdir
    env.setdefault("LANG", "C.UTF-8")
    return env


def spawn(
    python: str,
    zygote_path: str,
    preimport: list[str],
    env: dict[str, str],
    workdir: str,
    close: tuple[int, ...] = (),
    code: bytes | None = None,
) -> Spawned:
    """Start a zygote; raises OSError. The caller must make it its child before it reaps.
    `close`: inheritable fds of ours the zygote must not get; `code`: what an earlier zygote
    compiled (its "M" message), so this one need not."""
    import _socket

    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    ctl = theirs.detach()
    if ctl == CTL_FD:  # dup2(3, 3) would leave it close-on-exec
        moved = os.dup(ctl)
        os.close(ctl)
        ctl = moved
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    argv = [python, "-c", BOOT, zygote_path, str(CTL_FD), workdir, ",".join(preimport)]
    if code is not None:
        argv.append("cached")
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, out_w, 1),
        (os.POSIX_SPAWN_DUP2, err_w, 2),
        (os.POSIX_SPAWN_DUP2, ctl, CTL_FD),
    ]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in close if fd > CTL_FD]
    try:
        pid = os.posix_spawn(python, argv, env, file_actions=actions)
    except BaseException:
        ours.close()
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (ctl, out_w, err_w):
            os.close(fd)
    spawned = Spawned(pid, ours.detach(), out_r, err_r, env, workdir)
    if code is not None:
        try:
            data = memoryview(len(code).to_bytes(4, "big") + code)
            while data:
                data = data[os.write(spawned.ctl, data) :]
        except OSError:
            spawned.abandon()
            raise
    return spawned


def early(argv: list[str]) -> Spawned | None:
    """Start the zygote from the agent's command line, if it is the plain production one
    (no --env-file); None otherwise or on any error: the agent then starts it as usual."""
    options: dict[str, str] = {}
    i = 0
    while i < len(argv):
        key, eq, value = argv[i].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 1
        options[key] = value
        i += 1
    if "--env-file" in options or not set(options) <= {
        "--fd",
        "--listen",
        "--deadline",
        "--workdir",
        "--journal-bytes",
        "--preimport",
    }:
        return None
    try:
        workdir = os.path.abspath(options.get("--workdir") or os.getcwd())
        names, _ = module_names(options.get("--preimport", ""))
        env = default_env(dict(os.environ), workdir)
        zygote_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zygote.py")
        listening = (int(options["--fd"]),) if "--fd" in options else ()  # not ours to pass on
        return spawn(sys.executable or "python3", zygote_path, names, env, workdir, listening)
    except Exception:
        return None
