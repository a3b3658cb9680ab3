"""The HTTP API and its app factory (uvicorn ``sagakit.api:create_app --factory``)."""

from .app import create_app

__all__ = ["create_app"]
