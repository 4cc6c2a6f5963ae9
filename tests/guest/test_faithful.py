"""The rule deciding which `python3 -c` the zygote may serve (guest/faithful.py), case by case.

The end-to-end behaviour is in test_zygote.py; here each reason to fall back is pinned down on
its own, against a real directory tree standing in for an image.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tartarus.guest import faithful


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """usr/bin/python3.11 with the aliases python3 and python, plus a virtualenv's alias."""
    bin_dir = tmp_path / "usr" / "bin"
    bin_dir.mkdir(parents=True)
    real = bin_dir / "python3.11"
    real.write_text("#!/bin/false\n")
    real.chmod(0o755)
    (bin_dir / "python3").symlink_to("python3.11")
    (bin_dir / "python").symlink_to("python3")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "bin" / "python3").symlink_to(real)
    (tmp_path / "work").mkdir()
    return tmp_path


def _info(image: Path, *modules: str) -> faithful.Info:
    fields = [b"R", b"executable", os.fsencode(image / "usr/bin/python3")]
    for name in modules:
        fields += [b"module", name.encode()]
    return faithful.Info(fields)


def _env(image: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{image}/usr/bin:/bin", "HOME": "/home/user", "LANG": "C.UTF-8", **extra}


def plan(image: Path, argv: list[str], info: faithful.Info | None = None, **env: str) -> str | None:
    return faithful.command_plan(
        argv, _env(image, **env), str(image / "work"), _env(image), info or _info(image)
    )


def test_exactly_python_dash_c(image: Path) -> None:
    assert plan(image, ["python3", "-c", "pass"]) == ""
    assert plan(image, ["python3", "-c", "pass", "-x", "arg"]) == ""
    assert plan(image, [f"{image}/usr/bin/python3", "-c", "pass"]) == ""
    assert plan(image, ["../usr/bin/python3", "-c", "pass"]) == ""  # relative to cwd
    assert plan(image, ["python3", "-I", "-c", "pass"]) is None
    assert plan(image, ["python3", "-c"]) is None
    assert plan(image, ["python3", "script.py"]) is None
    assert plan(image, ["sh", "-c", "pass"]) is None


def test_aliases_of_the_interpreter_see_their_own_name(image: Path) -> None:
    assert plan(image, ["python", "-c", "pass"]) == f"{image}/usr/bin/python"
    assert plan(image, ["python3.11", "-c", "pass"]) == f"{image}/usr/bin/python3.11"
    # a virtualenv's python is the same file, but another sys.prefix and sys.path
    assert plan(image, [f"{image}/venv/bin/python3", "-c", "pass"]) is None
    # PATH decides which python3 runs, as for execvp
    assert plan(image, ["python3", "-c", "pass"], PATH=f"{image}/venv/bin:/usr/bin") is None
    assert plan(image, ["python3", "-c", "pass"], PATH="bin:/usr/bin") is None  # relative entry


def test_start_up_environment_must_match(image: Path) -> None:
    for name, value in [
        ("PYTHONHASHSEED", "0"),
        ("PYTHONPATH", "/x"),
        ("PYTHONUNBUFFERED", "1"),
        ("LC_ALL", "C"),
        ("LANG", "de_DE.UTF-8"),
        ("HOME", "/root"),
        ("LD_PRELOAD", "/x.so"),
        ("OMP_NUM_THREADS", "1"),
        ("TZ", "UTC"),
    ]:
        env = {**_env(image), name: value}
        assert (
            faithful.command_plan(
                ["python3", "-c", "pass"], env, str(image / "work"), _env(image), _info(image)
            )
            is None
        ), name
    assert plan(image, ["python3", "-c", "pass"], MY_SETTING="1", TERM="xterm") == ""


def test_undecodable_code_or_arguments(image: Path) -> None:
    assert plan(image, ["python3", "-c", "'\ud800'"]) is None
    assert plan(image, ["python3", "-c", "pass", "\udcff"]) == ""  # an undecodable byte: fine


def test_cwd_must_not_shadow_a_preimported_module(image: Path) -> None:
    info = _info(image, "pandas", "numpy")
    assert plan(image, ["python3", "-c", "pass"], info) == ""
    (image / "work" / "numpy").mkdir()
    assert plan(image, ["python3", "-c", "pass"], info) is None
    assert plan(image, ["python3", "-c", "pass"]) == ""  # nothing pre-imported: no shadowing


def test_import_path_stamps_change_when_packages_change(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    paths = [str(site), str(tmp_path / "missing")]
    before = faithful.path_stamps(paths)
    assert before[1] == -1
    os.utime(site, ns=(1, 1))
    assert faithful.path_stamps(paths) != before
