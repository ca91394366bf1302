"""The README's tables: every row has as many cells as its header.

A row with one cell too many renders without its last cell on GitHub, so a results or
ablation row silently loses its verdict ("kept?"); two such rows were found by hand in the
chest ablations (fifty-third session). Pipes inside code spans and escaped pipes are text,
not cell borders, and fenced code blocks hold no tables.
"""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / 'README.md'


def count_cells(row):
    """Number of cells of a markdown table row ``| a | b |`` (code spans and ``\\|`` kept)."""
    text = re.sub(r'`[^`]*`', 'code', row.strip()).replace('\\|', 'pipe')
    return text.strip('|').count('|') + 1


def table_rows_off_header(lines):
    """(line number, cells, header cells) of each table row whose cell count differs."""
    off, header, fenced = [], None, False
    for number, line in enumerate(lines, 1):
        if line.startswith('```'):
            fenced = not fenced
        if fenced or not line.startswith('|'):
            header = None
            continue
        cells = count_cells(line)
        if header is None:
            header = cells
        elif cells != header:
            off.append((number, cells, header))
    return off


@pytest.mark.parametrize('table, expected', [
    (['| a | b |', '| --- | --- |', '| 1 | 2 |'], []),
    (['| a | b |', '| --- | --- |', '| 1 | 2 | 3 |'], [(3, 3, 2)]),
    (['| a | b |', '| --- | --- |', '| `x | y` | 2 |', '| 1 \\| 2 | 3 |'], []),
    (['| a | b |', '', '| 1 | 2 | 3 |', '| --- | --- | --- |'], []),
    (['```', '| a | b |', '| 1 | 2 | 3 |', '```'], []),
])
def test_table_rows_off_header_on_hand_made_tables(table, expected):
    assert table_rows_off_header(table) == expected


def test_readme_tables_have_as_many_cells_per_row_as_their_header():
    off = table_rows_off_header(README.read_text(encoding='utf-8').split('\n'))
    assert off == [], f'README.md rows (line, cells, header cells): {off}'
