"""Renderers of scenario runs: a dmesg-like text view (``text``) and JSON (``jsonout``)."""

from .jsonout import RUN_SCHEMA, run_document, to_json
from .text import render_text

__all__ = ["RUN_SCHEMA", "render_text", "run_document", "to_json"]
