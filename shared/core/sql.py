"""Named SQL queries, loaded once from sql/queries/*.sql.

A file holds blocks that each start with a `-- name --` line, then comment lines saying what the
query is for, then the statement. Callers write `cur.execute(QUERIES["name"], params)`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, LiteralString, TypeVar

if TYPE_CHECKING:
    from psycopg import Cursor

Row = TypeVar("Row")

QUERIES_DIR = Path(__file__).resolve().parents[2] / "sql" / "queries"
_HEADER = re.compile(r"^-- ([a-z0-9_]+) --$", re.MULTILINE)


def load_queries(directory: Path = QUERIES_DIR) -> dict[str, LiteralString]:
    queries: dict[str, LiteralString] = {}
    for path in sorted(directory.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        headers = list(_HEADER.finditer(text))
        for header, following in zip(headers, headers[1:] + [None], strict=True):
            name = header.group(1)
            body = text[header.end() : following.start() if following else len(text)]
            statement = "\n".join(
                line for line in body.strip().splitlines() if not line.lstrip().startswith("--")
            ).strip()
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice (in {path.name})")
            # Text of the repository's own .sql files, never user input: what LiteralString stands
            # for. mypy treats LiteralString as str, so no cast is needed (one would be redundant).
            queries[name] = statement
    return queries


QUERIES = load_queries()


def one_row(cursor: Cursor[Row], query: str) -> Row:
    """The row of a statement that always returns one (INSERT ... RETURNING, SELECT f(...)):
    psycopg types fetchone() as optional, so this says which query broke that promise."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError(f"query {query!r} returned no row")
    return row
