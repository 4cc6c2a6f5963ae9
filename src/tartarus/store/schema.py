"""The tables. Specs and timings are stored as JSON documents validated by the models layer;
columns exist only for what queries filter or sort on."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

sandboxes = sa.Table(
    "sandboxes",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("tenant", sa.String(64), nullable=True, index=True),
    sa.Column("template", sa.String(64), nullable=False),
    sa.Column("runtime", sa.String(32), nullable=False),
    sa.Column("record", sa.JSON, nullable=False),  # models.Sandbox as JSON
    sa.Column("owner", sa.String(64), nullable=True),  # engine process "pid:start" (node.owners)
    sa.Column("pool", sa.String(64), nullable=True, index=True),  # waiting in this warm pool
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

templates = sa.Table(
    "templates",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),  # models.TemplateSpec as JSON
    sa.Column("image", sa.String(64), nullable=True),  # content hash of the built image
    sa.Column("source", sa.String(16), nullable=False),  # builtin | file | oci
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sandbox_id", sa.String(64), nullable=True, index=True),
    sa.Column("kind", sa.String(48), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
)

# Hermes' audit chain: every row's hash covers the previous row's hash and its own content,
# so editing or deleting a row in the middle breaks every hash after it (store/audit.py).
audit = sa.Table(
    "audit",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(48), nullable=False, index=True),  # e.g. admission.reject
    sa.Column("actor", sa.String(128), nullable=True),  # key id, "engine", "erinyes"
    sa.Column("tenant", sa.String(64), nullable=True, index=True),
    sa.Column("sandbox_id", sa.String(64), nullable=True, index=True),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("prev", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# Themis: every applied version of every policy (models.Policy as JSON); the newest version
# of a name is the one in force, older ones are history. Delete removes all of a name's rows
# (the audit log keeps what was deleted).
policies = sa.Table(
    "policies",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False, index=True),
    sa.Column("template", sa.String(64), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.name"), nullable=False, index=True),
    sa.Column("role", sa.String(16), nullable=False),  # admin | member
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),  # hex HMAC-SHA256(pepper, key)
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

# Acheron: the job queue between the submit path and the node engines. A create is a row
# here before any node touches it; a node claims it atomically (a lease, so a node that dies
# mid-claim does not keep it forever) and marks it done or failed.
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("sandbox_id", sa.String(64), nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),  # queued|claimed|done|failed
    sa.Column("node", sa.String(128), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Nyx: warm pool settings per template (models.PoolSpec); the ready sandboxes themselves are
# ordinary rows of `sandboxes` with `pool` set until they are handed out.
pools = sa.Table(
    "pools",
    metadata,
    sa.Column("template", sa.String(64), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Nyx: snapshots of sandboxes' writable layers (node/snapshots.py); the files live under
# STATE_DIR/snapshots/<id>/. `parent`: the snapshot the source sandbox was started from,
# whose layer lies below this one's.
snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), nullable=True, index=True),
    sa.Column("tenant", sa.String(64), nullable=True, index=True),
    sa.Column("parent", sa.String(64), nullable=True, index=True),
    sa.Column("record", sa.JSON, nullable=False),  # store.snapshots.Snapshot as JSON
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
)
