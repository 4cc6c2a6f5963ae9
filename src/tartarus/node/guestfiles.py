"""Installing the guest agent where sandboxes can bind-mount it.

The package may live in a directory an unprivileged (user-namespaced) container root cannot
traverse, so the agent's files are copied once into the state dir, world-readable, under a
content hash: a changed agent never mixes with running sandboxes' copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
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
    tmp.chmod(0o755)
    target.parent.chmod(0o755)
    try:
        tmp.rename(target)
    except OSError:  # another engine installed it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
