"""Styx through the API, the SDK and the CLI: create-time network options, run-time changes
(`PUT /v1/sandboxes/{id}/network`, `Sandbox.set_network`, `tartarus network set`), their
records (event and audit) and their errors. Targets are in the test world (conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from tartarus.sdk import AsyncSandbox, Sandbox
from tartarus.sdk import errors as sdk_errors
from tests.api.conftest import ApiServer, assert_error, client, new_tenant, run_server
from tests.conftest import TARTARUS
from tests.network.conftest import CIDR_HOST, INTERNET, PROBE, WORLD_DNS, World

UPSTREAM = {"TARTARUS_DNS_UPSTREAM": f"{WORLD_DNS}:53"}
PY = ("python3", "-c")


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[ApiServer]:
    yield from run_server(UPSTREAM)


@pytest.fixture(scope="module")
def key(server: ApiServer) -> str:
    return new_tenant(server)[1]


def _probe(sbx: Sandbox, probes: dict[str, tuple[str, list[object]]]) -> dict[str, str]:
    result = sbx.commands.run(["python3", "-c", PROBE, json.dumps(probes)], timeout=60)
    assert result.exit_code == 0, result.stderr
    out: dict[str, str] = json.loads(result.stdout)
    return out


def test_bad_input_is_refused(server: ApiServer, key: str) -> None:
    with client(server, key) as http:
        for body, status in (
            ({"network": "allowlist", "egress": ["not a domain!"]}, 422),
            ({"network": "allowlist", "egress": ["2001:db8::/32"]}, 422),
            ({"network": "allowlist", "egress": ["*.x"]}, 422),
            ({"network": "sideways"}, 422),
            ({"network": "none", "egress": ["pypi.org"]}, 400),  # rules need allowlist
        ):
            message = assert_error(http.post("/v1/sandboxes", json=body), status, "invalid_request")
            assert "egress" in message or "network" in message, message
        left = http.get("/v1/sandboxes").json()["items"]
        assert left == []  # nothing was made for any of them


def test_create_and_change_through_the_sdk(
    server: ApiServer, key: str, runtime: str, world: World
) -> None:
    with Sandbox.create(
        runtime=runtime,
        timeout=120,
        network="allowlist",
        egress=["allowed.test"],
        url=server.url,
        api_key=key,
    ) as sbx:
        probes: dict[str, tuple[str, list[object]]] = {
            "name": ("tcp", ["allowed.test", 8080]),
            "cidr": ("tcp", [CIDR_HOST, 8080]),
        }
        got = _probe(sbx, probes)
        assert got["name"] == "ok:internet" and got["cidr"].startswith("fail:"), got
        sbx.set_network("allowlist", [f"{CIDR_HOST}/32"])
        got = _probe(sbx, {**probes, "ip": ("tcp", [INTERNET, 8080])})
        assert got["cidr"] == "ok:internet", got
        assert got["name"].startswith("fail:") and got["ip"].startswith("fail:"), got
        with client(server, key) as http:
            detail = http.get(f"/v1/sandboxes/{sbx.id}").json()
            assert (detail["network"], detail["egress"]) == ("allowlist", [f"{CIDR_HOST}/32"])
            changes = [e["data"] for e in detail["events"] if e["kind"] == "network.set"]
            assert changes == [{"mode": "allowlist", "egress": [f"{CIDR_HOST}/32"]}]
            bad = http.put(
                f"/v1/sandboxes/{sbx.id}/network", json={"mode": "open", "egress": ["x"]}
            )
            assert_error(bad, 422, "invalid_request")
            to_none = http.put(f"/v1/sandboxes/{sbx.id}/network", json={"mode": "none"})
            assert "none" in assert_error(to_none, 409, "conflict")
        with client(server, server.admin_key) as admin:
            records = admin.get("/v1/audit", params={"kind": "network."}).json()["items"]
            mine = [r for r in records if r["sandbox_id"] == sbx.id]
            assert [(r["kind"], r["data"]["egress"]) for r in mine] == [
                ("network.set", [f"{CIDR_HOST}/32"])
            ]


async def test_async_sdk_and_none_sandboxes(server: ApiServer, key: str) -> None:
    async with await AsyncSandbox.create(timeout=120, url=server.url, api_key=key) as sbx:
        with pytest.raises(sdk_errors.ConflictError, match="network 'none'"):
            await sbx.set_network("open")


def test_cli_network_set(server: ApiServer, key: str, world: World) -> None:
    env = {**os.environ, "TARTARUS_URL": server.url, "TARTARUS_API_KEY": key}
    with Sandbox.create(timeout=120, network="open", url=server.url, api_key=key) as sbx:

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [TARTARUS, "network", "set", *args], env=env, capture_output=True, text=True
            )

        done = cli(sbx.id, "--mode", "allowlist", "--allow", "allowed.test")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [sbx.id, "allowlist", "allowed.test"]
        bad = cli(sbx.id, "--mode", "allowlist", "--allow", "bad domain")
        assert bad.returncode == 2 and bad.stderr.startswith("error:"), bad
        assert len(bad.stderr.strip().splitlines()) == 1
        missing = cli("sb-000000000000", "--mode", "open")
        assert missing.returncode == 2 and missing.stderr.startswith("error:"), missing
        got = _probe(sbx, {"ip": ("tcp", [CIDR_HOST, 8080])})
        assert got["ip"].startswith("fail:"), got  # allowlist now: open no longer


def test_cli_run_with_a_network(world: World) -> None:
    env = {**os.environ, **UPSTREAM}
    env.pop("TARTARUS_URL", None)
    code = "import socket; print(socket.create_connection(('allowed.test', 8080), 5).recv(9))"
    run = subprocess.run(
        [TARTARUS, "run", "--network", "allowlist", "--allow", "allowed.test", "--", *PY, code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "b'internet\\n'"
    refused = subprocess.run(
        [TARTARUS, "run", "--allow", "pypi.org", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and refused.stderr.startswith("error:"), refused


def test_policy_bounds_runtime_changes(server: ApiServer, world: World) -> None:
    tenant, key = new_tenant(server)
    policy = {"tenant": tenant, "network": {"modes": ["allowlist"], "egress": ["*.test"]}}
    with client(server, server.admin_key) as admin:
        assert admin.put(f"/v1/policies/styx-{tenant}", json=policy).status_code == 200
    with (
        Sandbox.create(
            timeout=120, network="allowlist", egress=["allowed.test"], url=server.url, api_key=key
        ) as sbx,
        client(server, key) as http,
    ):
        path = f"/v1/sandboxes/{sbx.id}/network"
        opened = http.put(path, json={"mode": "open"})
        assert "Styx" in assert_error(opened, 403, "permission_denied")
        outside = http.put(path, json={"mode": "allowlist", "egress": ["pypi.org"]})
        assert "pypi.org" in assert_error(outside, 403, "permission_denied")
        within = http.put(path, json={"mode": "allowlist", "egress": ["api.wild.test"]})
        assert within.status_code == 200, within.text
        assert within.json()["egress"] == ["api.wild.test"]
