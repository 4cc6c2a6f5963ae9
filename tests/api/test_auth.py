"""Keys, roles and tenants over HTTP: 401 and 403, the admin routes, immediate revocation."""

from __future__ import annotations

import os
import stat

from tests.api.conftest import ApiServer, assert_error, client, new_tenant


def test_missing_malformed_and_unknown_keys_are_401(api_server: ApiServer) -> None:
    with client(api_server, None) as anon:
        r = anon.get("/v1/sandboxes")
        assert_error(r, 401, "authentication")
        assert r.headers["www-authenticate"] == "Bearer"
        r = anon.get("/v1/sandboxes", headers={"Authorization": "Basic abc"})
        assert_error(r, 401, "authentication")
    for bad in ("nope", "tt_000000000000_secret", api_server.admin_key + "x"):
        with client(api_server, bad) as c:
            assert_error(c.get("/v1/templates"), 401, "authentication")


def test_admin_key_file_is_private(api_server: ApiServer) -> None:
    path = api_server.state_dir / "admin.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert api_server.admin_key.startswith("tt_")
    assert stat.S_IMODE(os.stat(api_server.state_dir / "pepper").st_mode) == 0o600


def test_revocation_takes_effect_at_once(api_server: ApiServer) -> None:
    tenant, key = new_tenant(api_server)
    with client(api_server, key) as c, client(api_server, api_server.admin_key) as admin:
        assert c.get("/v1/sandboxes").status_code == 200
        key_id = key.split("_")[1]
        r = admin.delete(f"/v1/keys/{key_id}")
        assert r.status_code == 200, r.text
        assert r.json()["revoked_at"] is not None
        assert "key" not in r.json()
        assert_error(c.get("/v1/sandboxes"), 401, "authentication")
        listed = admin.get("/v1/keys", params={"tenant": tenant}).json()["items"]
        assert [k["id"] for k in listed] == [key_id]
        assert listed[0]["revoked_at"] is not None
        assert_error(admin.delete("/v1/keys/ffffffffffff"), 404, "not_found")


def test_member_cannot_use_admin_routes(api_server: ApiServer) -> None:
    _, key = new_tenant(api_server)
    with client(api_server, key) as c:
        assert_error(c.get("/v1/tenants"), 403, "permission_denied")
        assert_error(c.post("/v1/tenants", json={"name": "x"}), 403, "permission_denied")
        assert_error(c.get("/v1/keys"), 403, "permission_denied")
        assert_error(
            c.post("/v1/keys", json={"tenant": "admin", "role": "admin"}), 403, "permission_denied"
        )


def test_admin_manages_tenants_and_keys(api_server: ApiServer) -> None:
    with client(api_server, api_server.admin_key) as admin:
        r = admin.post("/v1/tenants", json={"name": "acme-co"})
        assert r.status_code == 201, r.text
        assert r.json()["name"] == "acme-co"
        assert_error(admin.post("/v1/tenants", json={"name": "acme-co"}), 409, "conflict")
        names = [t["name"] for t in admin.get("/v1/tenants").json()["items"]]
        assert {"admin", "acme-co"} <= set(names)
        msg = assert_error(
            admin.post("/v1/tenants", json={"name": "Bad Name"}), 422, "invalid_request"
        )
        assert "name" in msg
        r = admin.post("/v1/keys", json={"tenant": "acme-co", "role": "admin", "name": "ops"})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["key"].startswith(f"tt_{body['id']}_")
        assert (body["tenant"], body["role"], body["name"]) == ("acme-co", "admin", "ops")
        assert_error(
            admin.post("/v1/keys", json={"tenant": "nobody", "role": "member"}), 404, "not_found"
        )
        msg = assert_error(
            admin.post("/v1/keys", json={"tenant": "acme-co", "role": "root"}),
            422,
            "invalid_request",
        )
        assert "role" in msg
        listed = admin.get("/v1/keys").json()["items"]
        assert body["id"] in {k["id"] for k in listed}
        assert all("key" not in k and "hash" not in k for k in listed)
    # an admin of another tenant administers, but still only sees its own sandboxes
    with client(api_server, body["key"]) as other_admin:
        assert other_admin.get("/v1/tenants").status_code == 200
        assert other_admin.get("/v1/sandboxes").json()["items"] == []
