"""Tables for the client commands: drawn on a terminal, plain aligned columns in a pipe."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text


def print_table(console: Console, headers: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> None:
    """Cells may hold rich markup. In a pipe: no box drawing and no colour; columns aligned and
    separated by two spaces, "-" for an empty cell."""
    if console.is_terminal:
        table = Table(*headers, title=title or None)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    plain = [list(headers)] + [[Text.from_markup(cell).plain or "-" for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in plain) for i in range(len(headers))]
    if title:
        console.print(f"{title}:", markup=False, highlight=False, soft_wrap=True)
    for r in plain:
        line = "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)).rstrip()
        console.print(line, markup=False, highlight=False, soft_wrap=True)
