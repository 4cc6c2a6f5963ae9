"""Warm pool settings and status: how many ready sandboxes of a template to keep ahead of demand.

`min` is what the pool keeps ready when idle. `max` bounds how far it grows when requests find
it empty (each miss raises the target by one; quiet minutes let it fall back to `min`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_POOL_SIZE = 500  # the original's density goal per host; beyond that is a typo


class PoolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str = Field(min_length=1, max_length=64)
    min: int = Field(ge=0, le=MAX_POOL_SIZE, description="ready sandboxes kept when idle")
    max: int | None = Field(
        None, ge=0, le=MAX_POOL_SIZE, description="ready sandboxes at most; default: min"
    )
    runtime: str | None = Field(None, description="runtime of the pooled sandboxes; default: auto")

    @model_validator(mode="after")
    def _bounds(self) -> PoolSpec:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must not be below min ({self.min})")
        return self

    @property
    def ceiling(self) -> int:
        return self.min if self.max is None else self.max


class PoolStatus(BaseModel):
    template: str
    runtime: str | None
    min: int
    max: int
    target: int  # what the pool is filling towards now, between min and max
    ready: int
    starting: int
    in_use: int  # handed out and still running
    hits: int
    misses: int
    hit_rate: float | None  # None before the first request
    last_error: str | None = None
