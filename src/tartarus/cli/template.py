"""`tartarus template ...`: list, build, import and remove templates (Erebus) from a shell.

Progress and errors go to stderr so stdout stays clean for `--json` and scripting. With
`TARTARUS_URL` set, `ls`, `build NAME` and `import` go to that server through the SDK
(`tartarus.sdk.templates`; build and import need an admin key); `rm` and `build FILE.yaml`
are embedded only.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tarfile
import tempfile
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


def _fail_remote(err: Exception, status_code: int | None) -> NoReturn:
    console = _stderr()
    console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    sys.exit(2 if status_code in (400, 404, 413, 422) or status_code is None else 1)


def _handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from tartarus.sdk import errors as sdk_errors

        try:
            return fn(*args, **kwargs)
        except TartarusError as err:
            _fail(err)
        except (sdk_errors.NotFoundError, sdk_errors.InvalidRequestError) as err:
            _fail_remote(err, None)
        except sdk_errors.TartarusError as err:
            _fail_remote(err, 500)

    return wrapper


def _remote() -> bool:
    return bool(os.environ.get("TARTARUS_URL"))


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
    _done_line(verb, name, info.hash, info.size_bytes, info.python, started)


def _done_line(
    verb: str, name: str, image: str, size_bytes: int, python: str | None, started: float
) -> None:
    click.echo(
        f"{verb} {name}: image {image[:12]}, {_mib(size_bytes)} MiB, "
        f"python {python or 'none'} ({time.monotonic() - started:.1f} s)"
    )


def _remote_done(verb: str, result: dict[str, Any], started: float) -> None:
    _done_line(
        verb,
        str(result["name"]),
        str(result.get("image") or ""),
        int(result.get("size_bytes") or 0),
        result.get("python"),
        started,
    )


def _local_rows() -> list[dict[str, Any]]:
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
    return rows


def _remote_rows() -> list[dict[str, Any]]:
    from tartarus.sdk.templates import Templates

    with Templates() as templates:
        items = templates.list()
    return [
        {
            "name": t["name"],
            "source": t["source"],
            "built": t["built"],
            "image": t["image"],
            "size_bytes": t.get("size_bytes"),
            "has_python": t.get("has_python"),
            "description": t["description"],
        }
        for t in items
    ]


@click.group("template")
def template() -> None:
    """Templates (Erebus): the root filesystems sandboxes start from."""


@template.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_handle_errors
def ls_cmd(as_json: bool) -> None:
    """List built-in and user templates."""
    rows = _remote_rows() if _remote() else _local_rows()
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
    if _remote():
        if is_file:
            raise InvalidRequestError(
                f"{target}: building a template from a spec file is not supported over the"
                " API yet; unset TARTARUS_URL to build it on this machine"
            )
        _remote_build(target, force, started)
        return
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
    if _remote():
        _remote_import(source, name, started)
        return
    with _catalog() as catalog, _progress_display(name) as report:
        info = catalog.register_oci(source, name, report)
    _done("imported", name, info, started)


def _remote_build(name: str, force: bool, started: float) -> None:
    from tartarus.sdk.templates import Templates

    with Templates() as templates:
        cached = bool(templates.get(name)["built"])  # unknown names fail before any progress
        with _progress_display(name) as report:
            result = templates.build(name, force=force, on_progress=report)
    if cached and not force:
        image = str(result.get("image") or "")
        click.echo(f"{name} is up to date: image {image[:12]} (spec unchanged)")
        return
    _remote_done("built", result, started)


def _pack_layout(layout: Path, dest: Path) -> None:
    """An OCI layout directory as an OCI archive (a tar of the layout, as the spec says)."""
    if not (layout / "index.json").is_file():
        raise InvalidRequestError(f"{layout}: not an OCI image layout (no index.json)")
    with tarfile.open(dest, "w") as tar:
        for entry in sorted(layout.iterdir()):
            tar.add(entry, arcname=entry.name)


def _remote_import(source: str, name: str, started: float) -> None:
    from tartarus.sdk.templates import Templates

    path = Path(source)
    if not path.exists():
        if ":" in source and Path(source.rsplit(":", 1)[0]).is_dir():
            raise InvalidRequestError(
                f"{source}: a tag in an OCI layout cannot be imported over the API;"
                " export that image to an OCI archive (skopeo copy oci:DIR:TAG oci-archive:FILE)"
            )
        raise NotFoundError(f"{source}: no such file or directory")
    with Templates() as templates, tempfile.TemporaryDirectory(prefix="tartarus-") as tmp:
        if path.is_dir():
            archive = Path(tmp) / "layout.tar"
            _pack_layout(path, archive)
            path = archive
        elif not path.is_file():
            raise InvalidRequestError(f"{source}: not a file or directory")
        with _progress_display(name) as report:
            report("uploading", None)
            result = templates.import_(path, name)
    image = str(result.get("image") or "")
    click.echo(f"imported {name}: image {image[:12]} ({time.monotonic() - started:.1f} s)")


@template.command("rm")
@click.argument("name")
@_handle_errors
def rm_cmd(name: str) -> None:
    """Remove a user template (and its image, unless another template uses it)."""
    if _remote():
        raise InvalidRequestError(
            "removing a template is not supported over the API yet;"
            " unset TARTARUS_URL to remove it on this machine"
        )
    with _catalog() as catalog:
        removed_image = catalog.remove(name)
    click.echo(f"removed {name}" + (" and its image" if removed_image else ""))
