"""The engine as child subreaper of its sandboxes' init processes (used by runtimes, whose
detached inits are re-parented, and by the engine).

`crun run --detach` forks the sandbox's init and exits, so the init is re-parented. Without
a subreaper it goes to the host's PID 1, which may reap late (here it left zombies behind);
with the engine as subreaper the init becomes our child and we reap it as soon as it ends.
"""

from __future__ import annotations

import asyncio
import ctypes
import os

PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> None:
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


async def reap(pid: int, timeout: float = 2.0) -> bool:
    """Collect `pid`'s exit status if it is (or becomes) our child; True once it is gone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return not _exists(pid)  # not ours to reap (adopted after a restart)
        if done:
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
