"""Plain-text output shared by the commands: aligned tables."""

from __future__ import annotations


def table(rows: list[tuple[str, ...]] | list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces; the first row is the header."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
