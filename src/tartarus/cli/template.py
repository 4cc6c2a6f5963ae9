"""`tartarus template ...`: list, build, import and remove templates (Erebus) from a shell.

Progress and errors go to stderr so stdout stays clean for `--json` and scripting.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from tartarus.config import Settings
from tartarus.errors import InvalidRequestError, NotFoundError, TartarusError
from tartarus.images.builder import ImageBuildError, ProgressFn
from tartarus.images.cache import ImageInfo
from tartarus.images.catalog import TemplateCatalog
from tartarus.images.specs import load_spec_file
from tartarus.store.database import Database

P = ParamSpec("P")
R = TypeVar("R")


def _stderr() -> Console:
    return Console(stderr=True)


def _fail(err: TartarusError) -> NoReturn:
    console = _stderr()
    console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    if isinstance(err, ImageBuildError):
        for line in err.output:
            console.print(f"  [dim]{escape(line)}[/]", highlight=False, soft_wrap=True)
        if err.log is not None:
            console.print(f"  full log: {err.log}", highlight=False, soft_wrap=True)
    sys.exit(2 if isinstance(err, InvalidRequestError | NotFoundError) else 1)


def _handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except TartarusError as err:
            _fail(err)

    return wrapper


@contextmanager
def _catalog() -> Iterator[TemplateCatalog]:
    settings = Settings()
    db = Database(settings.db_path)
    try:
        yield TemplateCatalog.from_settings(settings, db)
    finally:
        db.close()


@contextmanager
def _progress_display(title: str) -> Iterator[ProgressFn]:
    """A spinner + step + bar on a terminal; plain phase lines on stderr otherwise (CI logs)."""
    console = _stderr()
    if not console.is_terminal:
        seen: set[str] = set()

        def report_plain(step: str, _fraction: float | None) -> None:
            kind = " ".join(step.split()[:2])  # "debootstrap: Retrieving", not every package
            if kind not in seen:
                seen.add(kind)
                console.print(f"{title}: {escape(step)}", highlight=False, soft_wrap=True)

        yield report_plain
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[title]}[/]"),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=1.0, title=title)

        def report(step: str, fraction: float | None) -> None:
            text = step if len(step) <= 60 else step[:57] + "..."
            if fraction is None:
                progress.update(task, description=text)
            else:
                progress.update(task, description=text, completed=min(max(fraction, 0.0), 1.0))

        yield report


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f}"


def _done(verb: str, name: str, info: ImageInfo, started: float) -> None:
    click.echo(
        f"{verb} {name}: image {info.hash[:12]}, {_mib(info.size_bytes)} MiB, "
        f"python {info.python or 'none'} ({time.monotonic() - started:.1f} s)"
    )


@click.group("template")
def template() -> None:
    """Templates (Erebus): the root filesystems sandboxes start from."""


@template.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_handle_errors
def ls_cmd(as_json: bool) -> None:
    """List built-in and user templates."""
    rows: list[dict[str, Any]] = []
    with _catalog() as catalog:
        for tpl in catalog.list():
            info = catalog.cache.info(tpl.image_hash) if tpl.image_hash else None
            rows.append(
                {
                    "name": tpl.name,
                    "source": tpl.source,
                    "built": tpl.built,
                    "image": tpl.image_hash,
                    "size_bytes": info.size_bytes if info else None,
                    "has_python": info.has_python if info else None,
                    "description": tpl.spec.description,
                }
            )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "SOURCE", "BUILT", "IMAGE", "SIZE MiB", "DESCRIPTION"):
        table.add_column(col, justify="right" if col == "SIZE MiB" else "left")
    for r in rows:
        table.add_row(
            escape(r["name"]),
            r["source"],
            "yes" if r["built"] else "no",
            (r["image"] or "-")[:12],
            _mib(r["size_bytes"]) if r["size_bytes"] is not None else "-",
            escape(r["description"]),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=240)  # piped: do not wrap descriptions at 80 columns
    console.print(table)


@template.command("build")
@click.argument("target")
@click.option("--force", is_flag=True, help="Rebuild even if the image is cached.")
@_handle_errors
def build_cmd(target: str, force: bool) -> None:
    """Build a template by NAME, or register and build FILE.yaml."""
    is_file = target.endswith((".yaml", ".yml")) or Path(target).is_file()
    started = time.monotonic()
    with _catalog() as catalog:
        if is_file:
            load_spec_file(target)  # a bad file fails before any progress output
            with _progress_display(Path(target).name) as report:
                info = catalog.register_file(target, report, force=force)
            name = info.spec.name
        else:
            cached = catalog.resolve(target).built  # unknown names fail before any progress
            with _progress_display(target) as report:
                info = catalog.ensure_built(target, report, force=force)
            name = target
            if cached and not force:
                click.echo(f"{name} is up to date: image {info.hash[:12]} (spec unchanged)")
                return
    _done("built", name, info, started)


@template.command("import")
@click.argument("source")
@click.option("--name", required=True, help="Name of the new template.")
@_handle_errors
def import_cmd(source: str, name: str) -> None:
    """Import an OCI layout dir (DIR[:tag]), OCI archive or docker-archive tar as a template."""
    started = time.monotonic()
    with _catalog() as catalog, _progress_display(name) as report:
        info = catalog.register_oci(source, name, report)
    _done("imported", name, info, started)


@template.command("rm")
@click.argument("name")
@_handle_errors
def rm_cmd(name: str) -> None:
    """Remove a user template (and its image, unless another template uses it)."""
    with _catalog() as catalog:
        removed_image = catalog.remove(name)
    click.echo(f"removed {name}" + (" and its image" if removed_image else ""))
