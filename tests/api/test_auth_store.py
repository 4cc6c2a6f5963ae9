"""The key store on its own: HMAC with a per-server pepper, lookup by id, revocation."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tartarus.errors import ConflictError, InvalidRequestError, NotFoundError
from tartarus.store.auth import AuthStore, load_pepper
from tartarus.store.database import Database


@pytest.fixture
def store(tmp_path: Path) -> AuthStore:
    return AuthStore(Database(tmp_path / "t.db"), load_pepper(tmp_path))


def test_pepper_is_created_once_and_private(tmp_path: Path) -> None:
    first = load_pepper(tmp_path)
    assert len(first) == 32
    assert load_pepper(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "pepper").stat().st_mode) == 0o600


def test_keys_verify_only_exactly(store: AuthStore, tmp_path: Path) -> None:
    store.create_tenant("acme")
    record, key = store.create_key("acme", "member", "ci")
    assert key.startswith(f"tt_{record.id}_")
    found = store.verify(key)
    assert found is not None and (found.tenant, found.role) == ("acme", "member")
    for bad in (key[:-1] + ("A" if key[-1] != "A" else "B"), key + "x", "", "tt_", "tt_x_y"):
        assert store.verify(bad) is None
    # the same key under another pepper (a copied database) does not verify
    other = AuthStore(store.db, b"\1" * 32)
    assert other.verify(key) is None
    assert store.revoke_key(record.id).revoked_at is not None
    assert store.verify(key) is None


def test_tenant_and_key_errors(store: AuthStore) -> None:
    store.create_tenant("acme")
    with pytest.raises(ConflictError):
        store.create_tenant("acme")
    with pytest.raises(InvalidRequestError):
        store.create_tenant("Not Valid")
    with pytest.raises(NotFoundError):
        store.create_key("nobody", "member")
    with pytest.raises(InvalidRequestError):
        store.create_key("acme", "root")
    with pytest.raises(NotFoundError):
        store.revoke_key("000000000000")
    assert [t.name for t in store.list_tenants()] == ["acme"]
