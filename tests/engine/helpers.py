"""Running the real `tartarus` CLI as a subprocess, the way a user does."""

from __future__ import annotations

import subprocess

from tests.conftest import TARTARUS


def tartarus(
    *args: str, input: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [TARTARUS, *args], input=input, capture_output=True, timeout=timeout, check=False
    )


def run(
    runtime: str,
    *command: str,
    opts: tuple[str, ...] = (),
    input: bytes | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    return tartarus(
        "run",
        "--template",
        "python",
        "--runtime",
        runtime,
        *opts,
        "--",
        *command,
        input=input,
        timeout=timeout,
    )
