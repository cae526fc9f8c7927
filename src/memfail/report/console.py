"""Consoles for the tables the commands print."""

from __future__ import annotations

from rich.console import Console


def wide_console() -> Console:
    """A console for tables: the terminal's width, or 200 columns when writing to a pipe or
    a file (rich would otherwise cut every table to 80 columns there)."""
    c = Console(emoji=False)  # ":a:" in a name is text, not an emoji code
    return c if c.is_terminal else Console(width=200, emoji=False)
