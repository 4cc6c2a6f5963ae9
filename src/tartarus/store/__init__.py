"""Persistent state (SQLAlchemy Core): SQLite in WAL mode on one host, one schema for all modes."""

from tartarus.store.database import Database

__all__ = ["Database"]
