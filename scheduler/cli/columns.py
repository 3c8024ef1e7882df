"""Aligned text columns for the CLI: full rows for pipes, rows that fit a terminal's width.

Why not a rich ``Table``: when a table is wider than the terminal, rich
shrinks every column in proportion, so a status becomes ``schedul…`` while
a 36-character id stays whole; and piped output takes rich's default of 80
columns, cutting ``updated`` to ``updat…``. A person reads the status and
the node first and recognises an id by its first characters (like a short
git hash), so here the width is taken, in order, from the columns the caller
names as shrinkable, each down to its floor; every other column keeps its
full width. Piped output (``width=None``) is never cut, so ``grep`` and
``awk`` see every field. Columns are separated by two spaces, never tabs.

Pure: no terminal access; the caller passes the width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len, set_cell_size

GAP = "  "
ELLIPSIS = "…"


@dataclass(frozen=True, slots=True)
class Column:
    """A column's header, and the narrowest it may become (``None``: never shortened)."""

    header: str
    floor: int | None = None
    align_right: bool = False


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells, the cut marked with ``…`` (whole when it fits)."""
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    return set_cell_size(text, width - 1) + ELLIPSIS


def widths(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int | None) -> list[int]:
    """Each column's width: its widest cell, then shortened in order of ``floor`` columns to fit ``width``.

    Shrinkable columns give up width in the order they appear in
    ``columns``, the last one first (the trailing free-text column), each
    down to its floor, until the row fits ``width``. If it cannot fit, the
    row is longer than ``width`` (the terminal wraps it) rather than a status
    or a node name being cut.
    """
    natural = [max([cell_len(c.header)] + [cell_len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    if width is None:
        return natural
    out = list(natural)
    excess = sum(out) + cell_len(GAP) * (len(out) - 1) - width
    for i in reversed(range(len(columns))):
        floor = columns[i].floor
        if excess <= 0:
            break
        if floor is None or out[i] <= floor:
            continue
        give = min(excess, out[i] - floor)
        out[i] -= give
        excess -= give
    return out


def render(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int | None = None) -> list[str]:
    """The header line and one line per row, aligned; trailing spaces stripped."""
    sizes = widths(columns, rows, width)
    return [
        format_row(columns, sizes, [shorten(cell, size) for cell, size in zip(cells, sizes, strict=True)])
        for cells in [[c.header for c in columns], *rows]
    ]


def format_row(columns: Sequence[Column], sizes: Sequence[int], cells: Sequence[str]) -> str:
    """One line: each cell padded to its column's size (never cut here), two spaces apart.

    For output printed a row at a time, whose sizes are known before the
    rows are (the caller fixes them up front).
    """
    parts = []
    for col, size, cell in zip(columns, sizes, cells, strict=True):
        pad = " " * max(0, size - cell_len(cell))
        parts.append(pad + cell if col.align_right else cell + pad)
    return GAP.join(parts).rstrip()
