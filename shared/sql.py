"""Named SQL queries, loaded once from sql/queries/*.sql.

A file holds blocks that each start with a `-- name --` line, then comment lines saying what the
query is for, then the statement. Callers write `cur.execute(QUERIES["name"], params)`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import LiteralString, cast

QUERIES_DIR = Path(__file__).resolve().parent.parent / "sql" / "queries"
_HEADER = re.compile(r"^-- ([a-z0-9_]+) --$", re.MULTILINE)


def load_queries(directory: Path = QUERIES_DIR) -> dict[str, LiteralString]:
    queries: dict[str, LiteralString] = {}
    for path in sorted(directory.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        headers = list(_HEADER.finditer(text))
        for header, following in zip(headers, headers[1:] + [None]):
            name = header.group(1)
            body = text[header.end(): following.start() if following else len(text)]
            statement = "\n".join(
                line for line in body.strip().splitlines() if not line.lstrip().startswith("--")
            ).strip()
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice (in {path.name})")
            queries[name] = cast(LiteralString, statement)
    return queries


QUERIES = load_queries()
