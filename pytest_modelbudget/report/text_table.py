"""One plain-text table layout for every report that prints columns.

Columns are two spaces apart, each as wide as its widest cell, left-aligned unless named
in ``right_aligned``; trailing spaces are stripped so the lines paste cleanly. The end-of-run
summary uses it bare (a header, then rows); the profile command adds dashed rules and a total row.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence

_GAP = "  "


def text_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right_aligned: Collection[int] = (),
    total: Sequence[str] | None = None,
    rules: bool = False,
) -> Iterator[str]:
    """The lines of a table: the header, the rows, then the ``total`` row if one is given.

    With ``rules``, a dashed rule goes under the header and (when there is a total) above
    the total. ``right_aligned`` holds column indexes. Every row has one cell per header.
    """
    body = [tuple(row) for row in rows]
    tail = [tuple(total)] if total is not None else []
    for row in (*body, *tail):
        if len(row) != len(headers):
            raise ValueError(f"a table row has {len(row)} cells for {len(headers)} columns: {row!r}")
    widths = [max(len(row[i]) for row in (headers, *body, *tail)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return _GAP.join(
            cell.rjust(width) if i in right_aligned else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = _GAP.join("-" * width for width in widths).rstrip()
    yield line(headers)
    if rules:
        yield rule
    for row in body:
        yield line(row)
    if tail:
        if rules:
            yield rule
        yield line(tail[0])
