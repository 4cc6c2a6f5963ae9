from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tartarus.cli.template import template


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("TARTARUS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("TARTARUS_IMAGE_DIR", str(tmp_path / "images"))
    monkeypatch.setenv("TARTARUS_MIRROR", "http://invalid.test/debian")
    return CliRunner()


def test_ls(runner: CliRunner) -> None:
    result = runner.invoke(template, ["ls"])
    assert result.exit_code == 0, result.output
    for name in ("base", "python", "python-ds", "builtin"):
        assert name in result.stdout
    result = runner.invoke(template, ["ls", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["base", "python", "python-ds"]
    assert all(r["built"] is False and r["image"] is None for r in rows)


def test_bad_file_exits_2_with_one_line(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\napt: [ok\n")
    result = runner.invoke(template, ["build", str(bad)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {bad}: invalid YAML at line")


def test_unknown_template_and_usage_errors(runner: CliRunner) -> None:
    result = runner.invoke(template, ["build", "nope"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: unknown template 'nope'; available: base, python, python-ds"
    )
    assert runner.invoke(template, ["import", "x"]).exit_code == 2  # --name missing
    result = runner.invoke(template, ["rm", "python"])
    assert result.exit_code == 2 and "built-in" in result.stderr


def test_import_ls_rm(runner: CliRunner, busybox_layout: Path) -> None:
    result = runner.invoke(template, ["import", str(busybox_layout), "--name", "bb"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("imported bb: image oci-")
    rows = {r["name"]: r for r in json.loads(runner.invoke(template, ["ls", "--json"]).stdout)}
    assert rows["bb"]["source"] == "oci" and rows["bb"]["built"] is True
    assert rows["bb"]["has_python"] is False and rows["bb"]["size_bytes"] > 0
    table = runner.invoke(template, ["ls"]).stdout
    assert "bb" in table and rows["bb"]["image"][:12] in table
    result = runner.invoke(template, ["rm", "bb"])
    assert result.exit_code == 0 and result.stdout.strip() == "removed bb and its image"
    assert runner.invoke(template, ["rm", "bb"]).exit_code == 2


def test_import_failure_exits_1(runner: CliRunner, busybox_layout: Path) -> None:
    for blob in (busybox_layout / "blobs" / "sha256").iterdir():
        if blob.stat().st_size > 100_000:
            blob.write_bytes(b"garbage")
    result = runner.invoke(template, ["import", str(busybox_layout), "--name", "bb"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "\nerror: umoci unpack failed (exit 1): " in result.stderr
    assert "digest mismatch" in result.stderr
