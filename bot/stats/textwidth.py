"""How wide text shows in a monospaced grid (spreadsheet columns, chart labels)."""

from __future__ import annotations

import unicodedata


def columns(text: str) -> int:
    """East Asian wide and full-width characters take two columns, others one."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
