"""SDK integration tests run against the real `tartarus server` fixture of the API tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tartarus.sdk import Admin
from tests.api.conftest import ApiServer, api_server  # noqa: F401

_counter = iter(range(1_000_000))


def make_tenant(server: ApiServer) -> tuple[str, str]:
    """A fresh tenant and a member key for it, made through the SDK's admin client."""
    name = f"sdk{os.getpid()}-{next(_counter)}"
    with Admin(server.url, server.admin_key) as admin:
        admin.create_tenant(name)
        key = admin.create_key(name, role="member", name="sdk-tests")
    assert key.key is not None
    return name, key.key


@pytest.fixture(scope="module")
def member(api_server: ApiServer) -> tuple[str, str]:  # noqa: F811
    return make_tenant(api_server)


@pytest.fixture
def sdk_env(
    api_server: ApiServer,  # noqa: F811
    member: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[None]:
    """TARTARUS_URL/TARTARUS_API_KEY set for a member of a fresh tenant."""
    monkeypatch.setenv("TARTARUS_URL", api_server.url)
    monkeypatch.setenv("TARTARUS_API_KEY", member[1])
    yield
