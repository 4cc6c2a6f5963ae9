"""Building a template's rootfs with debootstrap (+ pip): every sandbox starts from a known image.

Builds are keyed by `TemplateSpec.content_hash()`: an unchanged spec is never rebuilt. The
downloaded .debs are kept in a shared cache dir so later builds only fetch the Release files.
A failed build leaves nothing behind (no temp dir, no mount) and its error carries the failing
step and the tail of the tool's output; the full log is kept in `image_dir/.logs/`.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from tartarus.errors import BuildError
from tartarus.images.cache import ImageCache, ImageInfo, find_python, tree_size
from tartarus.models.template import TemplateSpec

ProgressFn = Callable[[str, float | None], None]

USER_NAME = "user"
USER_UID = 1000
USER_HOME = "/home/user"
AGENT_MOUNTPOINT = "/.tartarus"
TAIL_LINES = 25
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BUILD_CA = "/tmp/.tartarus-build-ca.pem"
_PASSTHROUGH_PROXY = {"http_proxy", "https_proxy", "no_proxy", "all_proxy"}

_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}

# Overall progress fractions for debootstrap's phases (pip builds rescale these).
_DEBOOTSTRAP_PHASES = {
    "Retrieving": (0.02, 0.30),
    "Validating": (0.02, 0.30),
    "Extracting": (0.30, 0.45),
    "Installing": (0.45, 0.47),
    "Unpacking": (0.47, 0.70),
    "Configuring": (0.70, 0.95),
}
_PHASE_RE = re.compile(r"^I: (Retrieving|Validating|Extracting|Installing|Unpacking|Configuring)\b")


class ImageBuildError(BuildError):
    """A build step failed; `str()` is one line, `output` holds the tool's last lines."""

    def __init__(
        self, message: str, *, step: str, output: Sequence[str] = (), log: Path | None = None
    ):
        super().__init__(message)
        self.step = step
        self.output = list(output)
        self.log = log


def _noop(_step: str, _fraction: float | None) -> None:
    return None


class _Runner:
    """Runs one build's subprocesses, keeping the full log and a tail for error messages."""

    def __init__(self, spec: TemplateSpec, log_lines: list[str]) -> None:
        self.spec = spec
        self.log = log_lines

    def run(
        self,
        step: str,
        argv: Sequence[str],
        *,
        on_line: Callable[[str], None] | None = None,
        extra_tail: Callable[[], list[str]] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log.append(f"$ {' '.join(argv)}")
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={**_BASE_ENV, **(env or {})},
                text=True,
                errors="replace",
                bufsize=1,
            )
        except OSError as err:
            raise ImageBuildError(
                f"build of template '{self.spec.name}' failed at step '{step}': "
                f"cannot run {argv[0]}: {err.strerror}",
                step=step,
            ) from None
        assert proc.stdout is not None
        with proc:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                self.log.append(line)
                if line.strip():
                    tail.append(line)
                if on_line is not None:
                    on_line(line)
        if proc.returncode != 0:
            lines = list(tail)
            if extra_tail is not None:
                more = extra_tail()
                if more:
                    self.log.extend(more)
                    lines = [*lines, "--- debootstrap.log ---", *more][-TAIL_LINES:]
            raise ImageBuildError(
                f"build of template '{self.spec.name}' failed at step '{step}' "
                f"(exit {proc.returncode}): {_summary(lines)}",
                step=step,
                output=lines,
            )


def _summary(lines: Sequence[str]) -> str:
    """The most telling line of a failed tool's output: the last error, else the last line."""
    for line in reversed(lines):
        if line.startswith(("E:", "ERROR:", "error:")) or "Error" in line:
            return line.strip()
    return lines[-1].strip() if lines else "no output"


@contextlib.contextmanager
def _deb_cache_lock(deb_cache: Path) -> Iterator[None]:
    # debootstrap downloads straight into the cache dir; two at once could tear a .deb.
    fd = os.open(deb_cache / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _proc_mounted(root: Path) -> Iterator[None]:
    target = root / "proc"
    target.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(target)], check=True, capture_output=True)
    try:
        yield
    finally:
        result = subprocess.run(["umount", str(target)], check=False, capture_output=True)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def _debootstrap(
    spec: TemplateSpec,
    root: Path,
    runner: _Runner,
    *,
    mirror: str,
    deb_cache: Path,
    progress: ProgressFn,
    scale: float,
) -> None:
    include = ["python3", *spec.apt]
    if spec.pip and "python3-pip" not in include:
        include.append("python3-pip")
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(dict.fromkeys(include))}",
        f"--cache-dir={deb_cache}",
        spec.suite,
        str(root),
        mirror,
    ]
    counts: dict[str, int] = collections.Counter()
    last = {"frac": 0.0}

    def on_line(line: str) -> None:
        m = _PHASE_RE.match(line)
        if m is None:
            return
        phase = m.group(1)
        counts[phase] += 1
        lo, hi = _DEBOOTSTRAP_PHASES[phase]
        if phase in ("Retrieving", "Validating"):
            # the package count is unknown while downloading: approach the phase end slowly
            done = counts["Retrieving"] + counts["Validating"]
            frac = lo + (hi - lo) * done / (done + 40)
        else:
            seen = max(counts["Retrieving"], counts["Validating"], counts[phase], 1)
            frac = lo + (hi - lo) * min(counts[phase] / seen, 1.0)
        last["frac"] = max(last["frac"], frac)  # debootstrap unpacks/configures twice
        progress(f"debootstrap: {line[3:].strip()}", last["frac"] * scale)

    def debootstrap_log() -> list[str]:
        log = root / "debootstrap" / "debootstrap.log"
        try:
            return log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
        except OSError:
            return []

    deb_cache.mkdir(parents=True, exist_ok=True)
    with _deb_cache_lock(deb_cache):
        runner.run("debootstrap", argv, on_line=on_line, extra_tail=debootstrap_log)


def _pip_env() -> dict[str, str]:
    """Host network settings the build borrows: proxies and a non-local package index."""
    env = {k: v for k, v in os.environ.items() if k.lower() in _PASSTHROUGH_PROXY}
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"):
        value = os.environ.get(key, "")
        urls = [u for u in value.split() if not u.startswith("file:")]
        if urls:
            env[key] = " ".join(urls)
    return env


def _pip_install(
    spec: TemplateSpec, root: Path, runner: _Runner, progress: ProgressFn, lo: float, hi: float
) -> None:
    resolv = root / "etc" / "resolv.conf"
    saved: bytes | None = None
    if resolv.is_symlink() or resolv.exists():
        saved = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", resolv)
    env = _pip_env()
    build_ca = root / BUILD_CA.lstrip("/")
    if Path(HOST_CA_BUNDLE).is_file():
        # the host may sit behind a TLS-intercepting proxy whose CA the fresh rootfs lacks
        shutil.copyfile(HOST_CA_BUNDLE, build_ca)
        env.update(PIP_CERT=BUILD_CA, SSL_CERT_FILE=BUILD_CA, REQUESTS_CA_BUNDLE=BUILD_CA)
    argv = [
        "chroot",
        str(root),
        "python3",
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--break-system-packages",
        "--root-user-action=ignore",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar=off",
        *spec.pip,
    ]
    step = {"n": 0}

    def on_line(line: str) -> None:
        if line.startswith(("Collecting ", "Installing collected", "Successfully installed")):
            step["n"] += 1
            frac = lo + (hi - lo) * (1 - 0.8 ** step["n"])
            progress(f"pip: {line.strip()[:70]}", frac)

    try:
        with _proc_mounted(root):
            runner.run("pip install", argv, on_line=on_line, env=env)
    finally:
        build_ca.unlink(missing_ok=True)
        resolv.unlink(missing_ok=True)
        if saved is not None:
            resolv.write_bytes(saved)


def _write_files(spec: TemplateSpec, root: Path) -> None:
    for path, content in spec.files.items():
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink():
            dest.unlink()  # never write through a symlink that may point outside the rootfs
        dest.write_text(content, encoding="utf-8")
        dest.chmod(0o644)


def _append_line(path: Path, line: str, key: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    lines = [ln for ln in lines if ln.split(":", 1)[0] != key]
    lines.append(line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def add_user(root: Path) -> None:
    """Add `user` (uid/gid 1000) by editing passwd/group/shadow directly (no useradd needed)."""
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    _append_line(
        etc / "passwd", f"{USER_NAME}:x:{USER_UID}:{USER_UID}::{USER_HOME}:/bin/sh", USER_NAME
    )
    _append_line(etc / "group", f"{USER_NAME}:x:{USER_UID}:", USER_NAME)
    shadow = etc / "shadow"
    if shadow.exists():
        _append_line(shadow, f"{USER_NAME}:*:19000:0:99999:7:::", USER_NAME)
    gshadow = etc / "gshadow"
    if gshadow.exists():
        _append_line(gshadow, f"{USER_NAME}:*::", USER_NAME)
    home = root / USER_HOME.lstrip("/")
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, USER_UID, USER_UID)
    home.chmod(0o755)


def prepare_mountpoints(root: Path) -> None:
    """Directories the runtime mounts over; they must exist in a read-only base."""
    root.chmod(0o755)
    for name, mode in (
        (AGENT_MOUNTPOINT, 0o755),
        ("/proc", 0o555),
        ("/sys", 0o555),
        ("/dev", 0o755),
        ("/run", 0o755),
        ("/tmp", 0o1777),
    ):
        d = root / name.lstrip("/")
        if d.is_symlink():
            continue  # e.g. /run -> /var/run in some images: leave the image's choice
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(mode)


def _configure(spec: TemplateSpec, root: Path) -> None:
    _write_files(spec, root)
    add_user(root)
    prepare_mountpoints(root)
    etc = root / "etc"
    (etc / "hostname").write_text("sandbox\n", encoding="utf-8")
    (etc / "hosts").write_text("127.0.0.1\tlocalhost sandbox\n::1\tlocalhost\n", encoding="utf-8")
    # debootstrap copies the host's resolv.conf in; the runtime provides its own (or none).
    resolv = etc / "resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text("", encoding="utf-8")


def _trim(root: Path) -> None:
    for rel in (
        "var/lib/apt/lists",
        "var/cache/apt/archives",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
    ):
        d = root / rel
        if not d.is_dir() or d.is_symlink():
            continue
        for child in d.iterdir():
            if child.name in ("partial", "lock"):
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    for pattern in ("var/cache/apt/*.bin", "var/log/*.log", "var/log/apt/*"):
        for f in root.glob(pattern):
            if f.is_file():
                f.unlink(missing_ok=True)


def build(
    spec: TemplateSpec,
    cache: ImageCache,
    *,
    mirror: str,
    progress: ProgressFn | None = None,
    force: bool = False,
    deb_cache: Path | None = None,
) -> ImageInfo:
    """Build `spec` into `cache` (or return the cached image). Raises BuildError on failure."""
    report = progress or _noop
    h = spec.content_hash()
    if not force and cache.exists(h):
        return cache.info(h)
    debs = (deb_cache or cache.image_dir / ".debs").absolute()
    report("waiting for build lock", None)
    with cache.lock(h):
        if not force and cache.exists(h):  # another process built it while we waited
            return cache.info(h)
        started = time.monotonic()
        work = cache.new_workdir(h)
        root = work / "rootfs"
        log: list[str] = [f"# build of template {spec.name!r} ({h}) at {datetime.now(UTC)}"]
        runner = _Runner(spec, log)
        deb_scale = 0.5 if spec.pip else 0.85
        try:
            report("debootstrap: starting", 0.0)
            _debootstrap(
                spec,
                root,
                runner,
                mirror=mirror,
                deb_cache=debs,
                progress=report,
                scale=deb_scale,
            )
            if spec.pip:
                report("pip install", deb_scale)
                _pip_install(spec, root, runner, report, deb_scale, 0.9)
            report("configure", 0.9)
            _configure(spec, root)
            report("trim", 0.93)
            _trim(root)
            report("finalize", 0.96)
            info = ImageInfo(
                hash=h,
                template=spec.name,
                source="build",
                created_at=datetime.now(UTC),
                size_bytes=tree_size(root),
                python=find_python(root),
                spec=spec,
            )
            result = cache.commit(work, info)
        except BaseException as err:
            cache.discard(work)
            log_path = _save_log(cache, h, log)
            if isinstance(err, ImageBuildError):
                err.log = log_path
                raise
            if isinstance(err, OSError):
                raise ImageBuildError(
                    f"build of template '{spec.name}' failed: {err}",
                    step="filesystem",
                    log=log_path,
                ) from err
            raise
        (cache.image_dir / ".logs" / f"{h}.log").unlink(missing_ok=True)  # an old failure's
        report(f"built in {time.monotonic() - started:.0f} s", 1.0)
        return result


def _save_log(cache: ImageCache, h: str, lines: list[str]) -> Path | None:
    try:
        logs = cache.image_dir / ".logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"{h}.log"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="replace")
        return path
    except OSError:
        return None
