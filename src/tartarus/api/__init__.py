"""Olympus, the HTTP API: FastAPI routes over the node engine (see docs/api.md)."""

from tartarus.api.app import create_app

__all__ = ["create_app"]
