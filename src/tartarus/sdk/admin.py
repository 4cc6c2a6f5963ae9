"""Tenant, key, pool, policy and audit management (admin keys only), for the CLI and for
provisioning scripts.

Policies travel as plain dicts (the server validates them and answers with the stored
version), so a newer server's policy fields need no newer SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx2
from pydantic import BaseModel, ConfigDict

from tartarus.sdk import _api
from tartarus.sdk._client import AsyncClient, Call, Client, Request
from tartarus.sdk.models import ApiKey, Pool, Tenant

__all__ = ["Admin", "AsyncAdmin", "AuditPage", "AuditRecord", "AuditVerify"]


class AuditRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    seq: int
    ts: datetime
    kind: str
    actor: str | None = None
    tenant: str | None = None
    sandbox_id: str | None = None
    data: dict[str, Any]
    hash: str


class AuditPage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    items: list[AuditRecord]
    next_cursor: int | None = None  # pass as `after` for the next page


class AuditVerify(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    ok: bool
    broken_at: int | None = None


def _policy_path(name: str) -> str:
    return f"/v1/policies/{quote(name, safe='')}"


def _json(response: httpx2.Response) -> dict[str, Any]:
    data: dict[str, Any] = response.json()
    return data


def _items(response: httpx2.Response) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def list_policies() -> Call[list[dict[str, Any]]]:
    return Call(Request("GET", "/v1/policies"), _items)


def get_policy(name: str, version: int | None = None) -> Call[dict[str, Any]]:
    params = [("version", str(version))] if version is not None else []
    return Call(Request("GET", _policy_path(name), params=params), _json)


def apply_policy(policy: Mapping[str, Any]) -> Call[dict[str, Any]]:
    name = policy.get("name")
    if not isinstance(name, str) or not name:
        from tartarus.sdk.errors import InvalidRequestError

        raise InvalidRequestError("a policy needs a name")
    return Call(Request("PUT", _policy_path(name), json=dict(policy)), _json)


def delete_policy(name: str) -> Call[dict[str, Any]]:
    return Call(Request("DELETE", _policy_path(name)), _json)


def list_audit(
    *,
    tenant: str | None = None,
    kind: str | None = None,
    sandbox_id: str | None = None,
    after: int = 0,
    limit: int = 100,
) -> Call[AuditPage]:
    given = {"tenant": tenant, "kind": kind, "sandbox_id": sandbox_id}
    params = [(k, v) for k, v in given.items() if v is not None]
    params += [("after", str(after)), ("limit", str(limit))]
    return Call(
        Request("GET", "/v1/audit", params=params), lambda r: AuditPage.model_validate(r.json())
    )


def verify_audit() -> Call[AuditVerify]:
    return Call(Request("GET", "/v1/audit/verify"), lambda r: AuditVerify.model_validate(r.json()))


class Admin:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        self._client = Client(url, api_key, transport=transport)

    def create_tenant(self, name: str) -> Tenant:
        return self._client.call(_api.create_tenant(name))

    def tenants(self) -> list[Tenant]:
        return self._client.call(_api.list_tenants())

    def create_key(self, tenant: str, role: str = "member", name: str | None = None) -> ApiKey:
        """A new key; its secret is in `.key`, this one time only."""
        return self._client.call(_api.create_key(tenant, role, name))

    def keys(self, tenant: str | None = None) -> list[ApiKey]:
        return self._client.call(_api.list_keys(tenant))

    def revoke_key(self, key_id: str) -> ApiKey:
        return self._client.call(_api.revoke_key(key_id))

    def set_pool(
        self, template: str, min: int, max: int | None = None, runtime: str | None = None
    ) -> Pool:
        """Keep `min` sandboxes of `template` ready (growing up to `max` under demand)."""
        return self._client.call(_api.set_pool(template, min, max, runtime))

    def pools(self) -> list[Pool]:
        return self._client.call(_api.list_pools())

    def delete_pool(self, template: str) -> None:
        """Remove the pool; its ready sandboxes are killed."""
        self._client.call(_api.delete_pool(template))

    def policies(self) -> list[dict[str, Any]]:
        """The version in force of every policy."""
        return self._client.call(list_policies())

    def policy(self, name: str, version: int | None = None) -> dict[str, Any]:
        return self._client.call(get_policy(name, version))

    def apply_policy(self, policy: Mapping[str, Any]) -> dict[str, Any]:
        """Store `policy` (a dict with at least `name`) as its next version; returns it."""
        return self._client.call(apply_policy(policy))

    def delete_policy(self, name: str) -> dict[str, Any]:
        return self._client.call(delete_policy(name))

    def audit(
        self,
        *,
        tenant: str | None = None,
        kind: str | None = None,
        sandbox_id: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> AuditPage:
        """Audit records oldest first after the seq `after`; `kind` is a prefix."""
        return self._client.call(
            list_audit(tenant=tenant, kind=kind, sandbox_id=sandbox_id, after=after, limit=limit)
        )

    def verify_audit(self) -> AuditVerify:
        return self._client.call(verify_audit())

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncAdmin:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = AsyncClient(url, api_key, transport=transport)

    async def create_tenant(self, name: str) -> Tenant:
        return await self._client.call(_api.create_tenant(name))

    async def tenants(self) -> list[Tenant]:
        return await self._client.call(_api.list_tenants())

    async def create_key(
        self, tenant: str, role: str = "member", name: str | None = None
    ) -> ApiKey:
        return await self._client.call(_api.create_key(tenant, role, name))

    async def keys(self, tenant: str | None = None) -> list[ApiKey]:
        return await self._client.call(_api.list_keys(tenant))

    async def revoke_key(self, key_id: str) -> ApiKey:
        return await self._client.call(_api.revoke_key(key_id))

    async def set_pool(
        self, template: str, min: int, max: int | None = None, runtime: str | None = None
    ) -> Pool:
        return await self._client.call(_api.set_pool(template, min, max, runtime))

    async def pools(self) -> list[Pool]:
        return await self._client.call(_api.list_pools())

    async def delete_pool(self, template: str) -> None:
        await self._client.call(_api.delete_pool(template))

    async def policies(self) -> list[dict[str, Any]]:
        return await self._client.call(list_policies())

    async def policy(self, name: str, version: int | None = None) -> dict[str, Any]:
        return await self._client.call(get_policy(name, version))

    async def apply_policy(self, policy: Mapping[str, Any]) -> dict[str, Any]:
        return await self._client.call(apply_policy(policy))

    async def delete_policy(self, name: str) -> dict[str, Any]:
        return await self._client.call(delete_policy(name))

    async def audit(
        self,
        *,
        tenant: str | None = None,
        kind: str | None = None,
        sandbox_id: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> AuditPage:
        return await self._client.call(
            list_audit(tenant=tenant, kind=kind, sandbox_id=sandbox_id, after=after, limit=limit)
        )

    async def verify_audit(self) -> AuditVerify:
        return await self._client.call(verify_audit())

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncAdmin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
