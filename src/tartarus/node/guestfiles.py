"""Installing the guest agent where sandboxes can bind-mount it.

The package may live in a directory an unprivileged (user-namespaced) container root cannot
traverse, so the agent's files are copied once into the state dir, world-readable, under a
content hash: a changed agent never mixes with running sandboxes' copy.

They are compiled here too, for this host's Pythons (the images' python3 is usually the same
minor version as Debian's): the mount is read-only, so a guest can never cache bytecode
itself, and compiling the agent at every sandbox start cost ~12 ms of its start-up. A guest
Python of another version just compiles at start, as before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import tartarus.guest

SOURCE = Path(tartarus.guest.__file__).parent


BUSYBOX = Path("/bin/busybox")  # static (busybox-static): the init of python-less sandboxes


def install(state_dir: Path) -> Path:
    files = sorted(SOURCE.glob("*.py"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    if BUSYBOX.exists():
        st = BUSYBOX.stat()
        digest.update(f"busybox\0{st.st_size}:{st.st_mtime_ns}".encode())
        files.append(BUSYBOX)
    target = state_dir / "guest" / digest.hexdigest()[:16]
    if target.is_dir():
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, tmp / f.name)
        (tmp / f.name).chmod(0o755 if f == BUSYBOX else 0o644)
    _compile(tmp)
    tmp.chmod(0o755)
    target.parent.chmod(0o755)
    try:
        tmp.rename(target)
    except OSError:  # another engine installed it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


COMPILE = """
import pathlib, py_compile, sys
for src in pathlib.Path(sys.argv[1]).glob("*.py"):
    py_compile.compile(str(src), dfile=src.name, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


def _compile(directory: Path) -> None:
    """__pycache__/*.pyc for our Python and the host's python3 (unchecked hashes: the files
    never change under their content-hashed directory)."""
    for python in dict.fromkeys((sys.executable, shutil.which("python3") or sys.executable)):
        subprocess.run([python, "-I", "-c", COMPILE, str(directory)], check=False, timeout=60)
    cache = directory / "__pycache__"
    if cache.is_dir():
        cache.chmod(0o755)
        for pyc in cache.iterdir():
            pyc.chmod(0o644)
