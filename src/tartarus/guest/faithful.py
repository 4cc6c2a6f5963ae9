"""When may a `python3 -c` exec be served by the zygote? (see zygote.py and zygote_client.py)

Why a module of its own: this is the rule that must be right. The zygote path is taken only
when the command could not tell it from an exec of its own; anything else (other flags, another
interpreter, an environment the interpreter reads while starting, a file that could shadow a
pre-imported module, packages installed since the zygote started) takes the normal path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# Read by the interpreter, the C library or a pre-imported module while starting: a command
# whose environment differs from the zygote's in one of these must start afresh.
SENSITIVE_PREFIXES = (
    "PYTHON",
    "LC_",
    "LD_",
    "MALLOC_",
    "GLIBC_",
    "OMP_",
    "OPENBLAS_",
    "MKL_",
    "KMP_",
    "NUMEXPR_",
    "OPENSSL_",
)
SENSITIVE_NAMES = frozenset({"LANG", "LANGUAGE", "LOCPATH", "TZ", "TZDIR", "HOME", "TMPDIR"})


class Info:
    """What a ready zygote told us about itself (the R message of zygote.py)."""

    def __init__(self, fields: list[bytes]) -> None:
        self.executable = ""
        self.paths: list[str] = []
        self.modules: set[str] = set()
        self.failed: list[str] = []
        self.threads = 1
        for i in range(1, len(fields) - 1, 2):
            key, value = fields[i], fields[i + 1]
            if key == b"executable":
                self.executable = os.fsdecode(value)
            elif key == b"path" and value:
                self.paths.append(os.fsdecode(value))
            elif key == b"module":
                self.modules.add(os.fsdecode(value))
            elif key == b"failed":
                self.failed.append(value.decode("utf-8", "replace"))
            elif key == b"threads":
                self.threads = int(value)
        self.stamps = path_stamps(self.paths)


def path_stamps(paths: list[str]) -> list[int]:
    """Modification times of the import path (-1: missing): a package installed or removed
    since the zygote started changes one, and the zygote is then out of date."""
    stamps = []
    for path in paths:
        try:
            stamps.append(os.stat(path).st_mtime_ns)
        except OSError:
            stamps.append(-1)
    return stamps


def startup_env(env: Mapping[str, str]) -> dict[str, str]:
    return {
        k: v for k, v in env.items() if k in SENSITIVE_NAMES or k.startswith(SENSITIVE_PREFIXES)
    }


def _is_venv(executable: str) -> bool:
    here = os.path.dirname(executable)
    return any(os.path.exists(os.path.join(d, "pyvenv.cfg")) for d in (here, os.path.dirname(here)))


def resolve(argv0: str, env: Mapping[str, str], cwd: str) -> str | None:
    """The file exec would run for argv0 (PATH lookup as in execvp), or None."""
    if "/" in argv0:
        return os.path.normpath(os.path.join(cwd, argv0))
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        if not directory.startswith("/"):
            return None  # relative PATH entries: not worth imitating
        candidate = os.path.join(directory, argv0)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def command_plan(
    argv: list[str], env: Mapping[str, str], cwd: str, zygote_env: Mapping[str, str], info: Info
) -> str | None:
    """If `argv` run with `env` in `cwd` can be served faithfully by this zygote, the
    `sys.executable` the command must see ("" when it is the zygote's own); else None.

    Faithful means: exactly `PYTHON -c CODE [ARGS...]`, PYTHON found (PATH, cwd) to be the
    zygote's interpreter, by its own name or an alias that is no virtualenv; nothing in the
    environment that is read at start-up differs (`SENSITIVE_*`); and, when modules were
    pre-imported, no file in `cwd` could shadow one of them (`''` leads sys.path of `-c`).
    """
    if len(argv) < 3 or argv[1] != "-c":
        return None
    try:
        argv[2].encode("utf-8")  # `-c` code is compiled from UTF-8; surrogates fail there
        for arg in argv:
            os.fsencode(arg)
    except UnicodeError:
        return None
    path = resolve(argv[0], env, cwd)
    if path is None or not info.executable:
        return None
    executable = ""
    if path != info.executable:
        if os.path.realpath(path) != os.path.realpath(info.executable):
            return None
        if _is_venv(path) or _is_venv(info.executable):
            return None
        executable = path
    if startup_env(env) != startup_env(zygote_env):
        return None
    if info.modules:
        try:
            names = os.listdir(cwd)
        except OSError:
            return None
        if any(name.partition(".")[0] in info.modules for name in names):
            return None
    return executable
