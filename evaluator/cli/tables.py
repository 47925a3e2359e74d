"""Tables that fit: never a truncated name, less important columns dropped or folded to fit the width.

On a terminal a table fits the terminal's width; anywhere else (a pipe, a log file) the console is
unbounded and every column is printed at full width, so `grep` sees whole names.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

UNBOUNDED = 100_000
EMPTY = ("", "—")  # cells that say nothing: a column of only these is left out  # the width of a console that is not a terminal: lines are never wrapped or cut


def make_console(*, stderr: bool = False) -> Console:
    """Rich console for the CLI: the terminal's width on a terminal, unbounded in a pipe or log.
    No automatic highlighting: colour is used only where it means something (errors, warnings)."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console = Console(file=sys.stderr if stderr else sys.stdout, width=UNBOUNDED, highlight=False)
    return console


@dataclass(frozen=True)
class Col:
    header: str
    priority: int = 0  # 0: always shown; higher numbers are dropped first when the width is short
    fold: bool = False  # may wrap onto several lines at spaces (never inside a word)
    justify: str = "left"


Cell = str | Text


def _text(cell: Cell) -> Text:
    return cell if isinstance(cell, Text) else Text(cell)


def _longest_word(text: str) -> int:
    return max((len(w) for w in text.split()), default=0)


def _widths(col: Col, cells: list[Text]) -> tuple[int, int]:
    """(natural, minimum) content width of a column."""
    natural = max([len(col.header), *(c.cell_len for c in cells)])
    if not col.fold:
        return natural, natural
    return natural, max([_longest_word(col.header), *(_longest_word(c.plain) for c in cells)])


# Between two columns of the box style below: one space of padding and the (blank) divider; no outer edge.
_GAP = 2


def fit_table(cols: Sequence[Col], rows: Sequence[Sequence[Cell | None]], width: int, *,
              sections: Sequence[int] = ()) -> Table:
    """A table of `rows` (None = an empty cell) no wider than `width` where possible.

    Columns empty (or "—") in every row are left out. While the table is too wide, the column with
    the highest `priority` number is dropped, or wrapped at spaces if it is a `fold` column and no
    less important column is left. Priority-0 columns are never dropped and never wrap, so names are
    never cut. `sections` are row indices after which a blank line separates groups.
    """
    cells = [[_text(c) if c is not None else Text("") for c in row] for row in rows]
    keep = [i for i, _ in enumerate(cols) if cols[i].priority == 0 or any(row[i].plain not in EMPTY for row in cells)]
    while True:
        sizes = {i: _widths(cols[i], [row[i] for row in cells]) for i in keep}
        natural = sum(n for n, _ in sizes.values()) + _GAP * (len(keep) - 1)
        if natural <= width:
            return _table(cols, cells, keep, {i: n for i, (n, _) in sizes.items()}, sections)
        # Fold only the least important columns left: never wrap a column while a lesser one is still shown.
        least = max(cols[i].priority for i in keep)
        folding = [i for i in keep if cols[i].fold and cols[i].priority == least and least > 0]
        minimum = natural - sum(sizes[i][0] - sizes[i][1] for i in folding)
        droppable = [i for i in keep if cols[i].priority > 0]
        if minimum <= width or not droppable:
            break
        keep.remove(max(droppable, key=lambda i: (cols[i].priority, i)))
    widths = {i: n for i, (n, _) in sizes.items()}
    excess = natural - width
    for i in sorted(folding, key=lambda i: -sizes[i][0]):  # shrink the widest foldable column first
        cut = min(excess, sizes[i][0] - sizes[i][1])
        widths[i] -= cut
        excess -= cut
    return _table(cols, cells, keep, widths, sections)


def _table(cols: Sequence[Col], cells: list[list[Text]], keep: list[int], widths: dict[int, int],
           sections: Sequence[int]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0),
                  collapse_padding=False)
    for i in keep:
        col = cols[i]
        table.add_column(col.header, justify=col.justify, no_wrap=not col.fold, width=widths[i],
                         overflow="fold")
    starts = set(sections)
    for n, row in enumerate(cells):
        table.add_row(*(row[i] for i in keep), end_section=(n + 1) in starts)
    return table
