"""The operators' KQL queries in infra/queries/: each parses minimally, and every field they read
from the drain's `ingest.summary {json}` line is one the drain really logs (no KQL engine here, so
a renamed summary field would otherwise break the queries silently, in production)."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import pytest

from shared.core.observability import METRIC_NAMES
from shared.ingest.drain import DrainReport, _log_summary

QUERIES = Path(__file__).resolve().parents[2] / "infra" / "queries"
KQL_FILES = sorted(QUERIES.glob("*.kql"))
# Workspace-based Application Insights tables (shared/PLATFORM.md 3.4) the queries may read.
TABLES = {"traces", "requests", "exceptions", "customMetrics", "customEvents", "dependencies"}
SUMMARY_PREFIX = "ingest.summary "
PARSE = 'd = parse_json(substring(message, strlen("ingest.summary ")))'
FIELD = re.compile(r"(?<![\w.])d\.(\w+)|(?<![\w.])d\[\s*[\"'](\w+)[\"']\s*\]")
TABLE_AT_START = re.compile(r"^\s*(?:let\s+\w+\s*=\s*)?(\w+)\s*(?:$|\|)", re.MULTILINE)
STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _code(text: str) -> str:
    """The query without its // comments (the queries hold no '//' inside strings)."""
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def _summary_keys() -> set[str]:
    return set(DrainReport().summary().keys())


def test_there_are_queries() -> None:
    names = {p.stem for p in KQL_FILES}
    assert {
        "ingest_per_minute",
        "drain_runs",
        "lag_percentiles",
        "drain_failing_or_absent",
        "dead_letters_per_run",
        "function_failures",
        "ingest_per_tenant",
        "dead_letters_by_reason",
        "top_tenants",
        "broker_connection_failures",
        "quota_usage",
    } <= names


@pytest.mark.parametrize("path", KQL_FILES, ids=lambda p: p.name)
def test_query_parses_minimally(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.strip(), "empty query"
    assert text.lstrip().startswith("//"), "a query starts with a comment saying what it answers"
    code = _code(text)
    assert code.strip(), "only comments"
    tables = {m.group(1) for m in TABLE_AT_START.finditer(code)} & TABLES
    assert tables, f"no table from {sorted(TABLES)} at the start of a line"
    assert code.count("(") == code.count(")"), "unbalanced parentheses"
    assert code.count('"') % 2 == 0, "unbalanced quotes"


@pytest.mark.parametrize("path", KQL_FILES, ids=lambda p: p.name)
def test_summary_fields_are_logged_by_the_drain(path: Path) -> None:
    code = _code(path.read_text(encoding="utf-8"))
    fields = {a or b for a, b in FIELD.findall(code)}
    if not fields:
        return
    assert PARSE in code, "summary fields are read through d = parse_json(...) of the summary line"
    assert f'message startswith "{SUMMARY_PREFIX}"' in code
    unknown = fields - _summary_keys()
    assert not unknown, f"fields the summary does not have: {sorted(unknown)}"


def test_queries_filter_on_the_prefix_the_drain_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shared.ingest.drain")
    _log_summary(DrainReport(), time.monotonic())
    lines = [r.getMessage() for r in caplog.records if r.name == "shared.ingest.drain"]
    assert len(lines) == 1
    assert lines[0].startswith(SUMMARY_PREFIX)
    assert set(json.loads(lines[0][len(SUMMARY_PREFIX) :])) == _summary_keys()
    # Every string in the queries that names the summary line spells the prefix exactly.
    for path in KQL_FILES:
        for literal in STRING.findall(_code(path.read_text(encoding="utf-8"))):
            if literal.startswith("ingest.summary"):
                assert literal == SUMMARY_PREFIX, f"{path.name}: {literal!r}"


def test_the_field_pattern_catches_a_renamed_field() -> None:
    code = _code(f'traces\n| extend {PARSE}\n| project x = toint(d.message_count), y = d["ended"]  // d.nope\n')
    assert {a or b for a, b in FIELD.findall(code)} - _summary_keys() == {"message_count", "ended"}


METRIC_NAME = re.compile(r'name\s*(?:==|=~|in\s*\()\s*"([^"]+)"')


@pytest.mark.parametrize("path", KQL_FILES, ids=lambda p: p.name)
def test_metric_names_are_ones_the_code_records(path: Path) -> None:
    code = _code(path.read_text(encoding="utf-8"))
    if "customMetrics" not in code:
        return
    names = set(METRIC_NAME.findall(code))
    assert names, "a customMetrics query filters on a metric name"
    assert names <= METRIC_NAMES, f"not recorded by shared/core/observability.py: {sorted(names - METRIC_NAMES)}"


def test_metric_names_match_the_instruments() -> None:
    from shared.core import observability

    instruments = {
        value._name
        for value in vars(observability).values()
        if hasattr(value, "_name") and type(value).__name__.endswith(("Counter", "Histogram", "Gauge"))
    }
    assert instruments == METRIC_NAMES
