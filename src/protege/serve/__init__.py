"""Serving a trained student: an OpenAI-compatible server with request batching."""

from .app import build_app, serve

__all__ = ["build_app", "serve"]
