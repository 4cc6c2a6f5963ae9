"""Opening the database: SQLite with WAL, a busy timeout and BEGIN IMMEDIATE transactions,
so several processes (CLI invocations, a server) can share one state dir safely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tartarus.store import schema


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Autocommit at the driver level; SQLAlchemy's begin event below issues BEGIN IMMEDIATE.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _on_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Connections are kept (opening one and its pragmas costs more than a small write):
        # one per thread at a time, and any thread may take one (the server's loop thread,
        # Starlette's worker threads, the engine's).
        self.engine = sa.create_engine(
            f"sqlite:///{path}",
            poolclass=sa.pool.QueuePool,
            pool_size=4,
            max_overflow=16,
            connect_args={"check_same_thread": False},
        )
        sa.event.listen(self.engine, "connect", _on_connect)
        sa.event.listen(self.engine, "begin", _on_begin)
        schema.metadata.create_all(self.engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Additive migrations: a column added to the schema is added to an older database
        (nullable columns only; anything else needs a real migration)."""
        with self.begin() as conn:
            inspector = sa.inspect(conn)  # the same connection: a second one would deadlock
            for table in schema.metadata.sorted_tables:
                present = {c["name"] for c in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in present and column.nullable:
                        ddl = column.type.compile(dialect=self.engine.dialect)
                        conn.exec_driver_sql(
                            f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {ddl}'
                        )

    def begin(self) -> Any:
        return self.engine.begin()

    def close(self) -> None:
        self.engine.dispose()
