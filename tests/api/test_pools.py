"""Warm pools through the API, the SDK and the CLI, against a real server."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tartarus.sdk import Admin, Sandbox
from tartarus.sdk.errors import NotFoundError, PermissionDeniedError
from tests.api.conftest import ApiServer, client
from tests.conftest import TARTARUS
from tests.sdk.conftest import make_tenant


def _until_ready(admin: Admin, template: str, ready: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pools = {p.template: p for p in admin.pools()}
        if pools[template].ready >= ready:
            return
        time.sleep(0.1)
    raise AssertionError(f"pool {template} never had {ready} ready: {admin.pools()}")


def test_a_member_gets_a_pooled_sandbox(api_server: ApiServer) -> None:
    _, key = make_tenant(api_server)
    with Admin(api_server.url, api_server.admin_key) as admin:
        status = admin.set_pool("python", min=1, runtime="crun")
        assert (status.min, status.max) == (1, 1)
        try:
            _until_ready(admin, "python", 1)
            with Sandbox.create(
                env={"WHO": "pooled"}, runtime="crun", url=api_server.url, api_key=key
            ) as sandbox:
                assert "pool" in sandbox.info().timings_ms
                assert sandbox.commands.run("echo $WHO").stdout == "pooled\n"
                assert sandbox.run_code("print(6 * 7)").stdout == "42\n"
            _until_ready(admin, "python", 1)
            (pool,) = admin.pools()
            assert pool.hits == 1 and pool.hit_rate == 1.0
        finally:
            admin.delete_pool("python")
        assert admin.pools() == []
        with pytest.raises(NotFoundError):
            admin.delete_pool("python")


def test_pools_are_for_admins_and_checked(api_server: ApiServer) -> None:
    _, key = make_tenant(api_server)
    with Admin(api_server.url, key) as member, pytest.raises(PermissionDeniedError):
        member.set_pool("python", min=1)
    with client(api_server, api_server.admin_key) as http:
        bad = http.put("/v1/pools/python", json={"min": 3, "max": 2})
        assert bad.status_code == 400 and "max (2)" in bad.json()["error"]["message"]
        unknown = http.put("/v1/pools/no-such-template", json={"min": 1})
        assert unknown.status_code == 404
        negative = http.put("/v1/pools/python", json={"min": -1})
        assert negative.status_code == 422
        runtime = http.put("/v1/pools/python", json={"min": 1, "runtime": "nope"})
        assert runtime.status_code == 400 and "nope" in runtime.json()["error"]["message"]


def _cli(server: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TARTARUS_URL": server.url, "TARTARUS_API_KEY": server.admin_key}
    return subprocess.run(
        [TARTARUS, "pool", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_pool_commands(api_server: ApiServer) -> None:
    done = _cli(api_server, "set", "python", "--min", "1", "--max", "2", "--runtime", "crun")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pool python:")
    listed = _cli(api_server, "ls")
    assert listed.returncode == 0 and "python" in listed.stdout and "crun" in listed.stdout
    bad = _cli(api_server, "set", "python", "--min", "3", "--max", "1")
    assert bad.returncode == 2 and "--max (1) must not be below --min (3)" in bad.stderr
    removed = _cli(api_server, "rm", "python")
    assert removed.returncode == 0 and removed.stdout == "python\n"
    again = _cli(api_server, "rm", "python")
    assert again.returncode != 0 and again.stderr.startswith("error:")
    embedded = subprocess.run(
        [TARTARUS, "pool", "ls"],
        env={k: v for k, v in os.environ.items() if k != "TARTARUS_URL"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert embedded.returncode == 2 and "warm pools are managed by a server" in embedded.stderr
