"""A progress display for template builds that a command may trigger, on stderr."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress


class BuildProgress:
    """Shows nothing until the first update, so a cached template costs no output."""

    def __init__(self, title: str = "building template") -> None:
        self.title = title
        self._progress: Progress | None = None
        self._task: Any = None

    def update(self, step: str, fraction: float | None) -> None:
        if self._progress is None:
            # imported here: rich costs tens of ms, and most runs never build anything
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=1.0)
        assert self._task is not None
        self._progress.update(
            self._task,
            description=f"{self.title}: {step}",
            completed=fraction if fraction is not None else None,
        )

    def __enter__(self) -> BuildProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
