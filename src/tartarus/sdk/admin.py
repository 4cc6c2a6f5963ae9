"""Tenant and key management (admin keys only), for the CLI and for provisioning scripts."""

from __future__ import annotations

import httpx2

from tartarus.sdk import _api
from tartarus.sdk._client import AsyncClient, Client
from tartarus.sdk.models import ApiKey, Pool, Tenant

__all__ = ["Admin", "AsyncAdmin"]


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

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncAdmin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
