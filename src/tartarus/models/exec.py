"""Results of running a command inside a sandbox."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ExecResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None
