"""Waiting on a condition with a deadline (never a fixed sleep), and reading the test database."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Polls condition until it returns something truthy, which it returns; fails after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def query(database: Any, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of sql, run as the database owner (sees every tenant)."""
    with psycopg.connect(database.owner_dsn) as conn:
        return conn.execute(sql, params or {}).fetchall()
