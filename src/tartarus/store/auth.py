"""Tenants and API keys (Cerberus's store).

Keys are 256-bit random tokens, so a slow password KDF would add nothing but latency on every
request: we keep HMAC-SHA256(pepper, key), with the pepper in a 0600 file of the state dir,
so a leaked database alone does not let anyone test guesses. Nothing is cached: every request
reads the key row, which makes revocation take effect at once.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tartarus.errors import ConflictError, InvalidRequestError, NotFoundError
from tartarus.store.database import Database
from tartarus.store.schema import api_keys, tenants

ROLES = ("admin", "member")
KEY_PREFIX = "tt_"
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
KEY_ID_RE = re.compile(r"^[0-9a-f]{12}$")
PEPPER_BYTES = 32


@dataclass(frozen=True)
class Tenant:
    name: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: str
    role: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None


def _utc(ts: datetime | None) -> datetime | None:
    if ts is None or ts.tzinfo is not None:
        return ts
    return ts.replace(tzinfo=UTC)  # SQLite hands back naive datetimes


def _tenant(row: Any) -> Tenant:
    created = _utc(row.created_at)
    assert created is not None
    return Tenant(row.name, created)


def _key(row: Any) -> ApiKey:
    created = _utc(row.created_at)
    assert created is not None
    return ApiKey(row.id, row.tenant, row.role, row.name, created, _utc(row.revoked_at))


def load_pepper(state_dir: Path) -> bytes:
    """The server's pepper, created once (0600, O_EXCL so concurrent starts agree)."""
    path = state_dir / "pepper"
    state_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(PEPPER_BYTES))
        finally:
            os.close(fd)
    pepper = path.read_bytes()
    if len(pepper) != PEPPER_BYTES:
        raise RuntimeError(f"{path} is damaged ({len(pepper)} bytes); remove it and all keys")
    return pepper


# A verified key is remembered this long, so a request costs no database read for it. A
# revocation through this process applies at once; one written by another process sharing
# the database applies within this time.
VERIFY_CACHE_S = 5.0
VERIFY_CACHE_MAX = 10_000


class AuthStore:
    def __init__(self, db: Database, pepper: bytes, *, cache_s: float = VERIFY_CACHE_S) -> None:
        self.db = db
        self.pepper = pepper
        self.cache_s = cache_s
        self._verified: dict[str, tuple[ApiKey, float]] = {}  # digest -> (key, valid until)

    def _digest(self, key: str) -> str:
        return hmac.new(self.pepper, key.encode(), hashlib.sha256).hexdigest()

    # -- tenants --------------------------------------------------------------------------------

    def create_tenant(self, name: str) -> Tenant:
        if not TENANT_RE.match(name):
            raise InvalidRequestError(
                f"invalid tenant name {name!r}: 1-63 chars of a-z, 0-9, '_' or '-'"
            )
        tenant = Tenant(name, datetime.now(UTC))
        with self.db.begin() as conn:
            exists = conn.execute(sa.select(tenants.c.name).where(tenants.c.name == name)).first()
            if exists is not None:
                raise ConflictError(f"tenant {name!r} exists already")
            conn.execute(tenants.insert().values(name=name, created_at=tenant.created_at))
        return tenant

    def get_tenant(self, name: str) -> Tenant | None:
        with self.db.begin() as conn:
            row = conn.execute(sa.select(tenants).where(tenants.c.name == name)).first()
        return None if row is None else _tenant(row)

    def list_tenants(self) -> builtins.list[Tenant]:
        with self.db.begin() as conn:
            rows = conn.execute(sa.select(tenants).order_by(tenants.c.name)).all()
        return [_tenant(r) for r in rows]

    # -- keys -----------------------------------------------------------------------------------

    def create_key(self, tenant: str, role: str, name: str = "") -> tuple[ApiKey, str]:
        """A new key for `tenant`; the secret is returned only here."""
        if role not in ROLES:
            raise InvalidRequestError(f"invalid role {role!r}; one of {', '.join(ROLES)}")
        key_id = secrets.token_hex(6)
        secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id, tenant, role, name, datetime.now(UTC))
        with self.db.begin() as conn:
            if (
                conn.execute(sa.select(tenants.c.name).where(tenants.c.name == tenant)).first()
                is None
            ):
                raise NotFoundError(f"no tenant {tenant!r}")
            conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    tenant=tenant,
                    role=role,
                    name=name,
                    hash=self._digest(secret),
                    created_at=record.created_at,
                )
            )
        return record, secret

    def list_keys(self, tenant: str | None = None) -> builtins.list[ApiKey]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        with self.db.begin() as conn:
            rows = conn.execute(query).all()
        return [_key(r) for r in rows]

    def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke (idempotent: an already revoked key keeps its first revocation time)."""
        self._verified.clear()  # revoked at once, for every request this process serves
        with self.db.begin() as conn:
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            raise NotFoundError(f"no key {key_id!r}")
        return _key(row)

    def verify(self, key: str) -> ApiKey | None:
        """The live key record for a presented key, or None (unknown, malformed or revoked)."""
        if not key.startswith(KEY_PREFIX):
            return None
        key_id, sep, _ = key[len(KEY_PREFIX) :].partition("_")
        if not sep or not KEY_ID_RE.match(key_id):
            return None
        digest = self._digest(key)
        now = time.monotonic()
        cached = self._verified.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        with self.db.begin() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None or not hmac.compare_digest(row.hash, digest):
            return None
        if row.revoked_at is not None:
            return None
        if len(self._verified) >= VERIFY_CACHE_MAX:
            self._verified.clear()
        self._verified[digest] = (_key(row), now + self.cache_s)
        return _key(row)
