"""`tartarus template ls|build|import` against a server (`TARTARUS_URL` set), as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.api.conftest import ApiServer
from tests.conftest import TARTARUS
from tests.images.conftest import make_busybox_layout, skopeo_export
from tests.sdk.conftest import make_tenant


def run(
    server: ApiServer, key: str, *args: str, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TARTARUS_URL": server.url,
        "TARTARUS_API_KEY": key,
        # remote mode must not touch a local state dir: point it somewhere that does not exist
        "TARTARUS_STATE_DIR": str(server.state_dir / "not-used-by-the-cli"),
    }
    return subprocess.run(
        [TARTARUS, "template", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def test_ls_remote(api_server: ApiServer) -> None:
    _, key = make_tenant(api_server)  # any key may list
    rows = json.loads(ok(run(api_server, key, "ls", "--json")))
    names = {r["name"]: r for r in rows}
    assert "python" in names
    assert set(names["python"]) == {
        "name",
        "source",
        "built",
        "image",
        "size_bytes",
        "has_python",
        "description",
    }
    table = ok(run(api_server, key, "ls"))
    assert "NAME" in table.splitlines()[0] and "python" in table
    assert not (api_server.state_dir / "not-used-by-the-cli").exists()


def test_build_remote(api_server: ApiServer) -> None:
    out = ok(run(api_server, api_server.admin_key, "build", "python"))
    assert out.startswith("python is up to date: image ") or out.startswith("built python:"), out


def test_build_remote_errors(api_server: ApiServer, tmp_path: Path) -> None:
    r = run(api_server, api_server.admin_key, "build", "no-such-template")
    assert r.returncode == 2 and "unknown template" in r.stderr, r
    spec = tmp_path / "mine.yaml"
    spec.write_text("name: mine\n")
    r = run(api_server, api_server.admin_key, "build", str(spec))
    assert r.returncode == 2, r
    assert "not supported over the API" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    _, member = make_tenant(api_server)
    r = run(api_server, member, "build", "python")
    assert r.returncode != 0 and "admin" in r.stderr, r


def test_import_remote(api_server: ApiServer, tmp_path: Path) -> None:
    layout = make_busybox_layout(tmp_path / "layout")
    archive = skopeo_export(layout, "t", "docker-archive", tmp_path / "bb.tar")
    name = f"cli-bb-{os.getpid()}"
    out = ok(run(api_server, api_server.admin_key, "import", str(archive), "--name", name))
    assert out.startswith(f"imported {name}: image oci-"), out
    # an OCI layout directory is packed into an OCI archive by the CLI
    name2 = f"cli-bb-dir-{os.getpid()}"
    out = ok(run(api_server, api_server.admin_key, "import", str(layout), "--name", name2))
    assert out.startswith(f"imported {name2}: image oci-"), out

    rows = {
        r["name"]: r for r in json.loads(ok(run(api_server, api_server.admin_key, "ls", "--json")))
    }
    assert rows[name]["source"] == "oci" and rows[name]["built"] is True
    assert rows[name2]["image"] == rows[name]["image"]  # the same layers, the same image

    r = run(api_server, api_server.admin_key, "import", str(tmp_path / "nope.tar"), "--name", "x")
    assert r.returncode == 2 and "no such file" in r.stderr, r
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar" * 100)
    r = run(api_server, api_server.admin_key, "import", str(garbage), "--name", "garbage")
    assert r.returncode == 2 and "unrecognised image format" in r.stderr, r
