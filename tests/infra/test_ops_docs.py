"""docs/runbook.md and docs/capacity.md cite only what exists: every operator query in infra/queries (each one
at least once in the runbook), every script, every benchmark command; so a renamed file breaks a test, not an
incident at 3 a.m."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = (REPO / "docs" / "runbook.md").read_text()
CAPACITY = (REPO / "docs" / "capacity.md").read_text()


def test_the_runbook_cites_every_operator_query_and_only_existing_ones() -> None:
    queries = {path.name for path in (REPO / "infra" / "queries").glob("*.kql")}
    cited = set(re.findall(r"\b([a-z_]+\.kql)\b", RUNBOOK))
    assert cited - queries == set(), "the runbook cites queries that do not exist"
    assert queries - cited == set(), "queries the runbook never uses"


def test_the_docs_name_only_scripts_that_exist() -> None:
    for document in (RUNBOOK, CAPACITY):
        for script in set(re.findall(r"\b(scripts/[A-Za-z_][A-Za-z0-9_.-]*[A-Za-z0-9])", document)):
            assert (REPO / script).is_file(), script


def test_every_capacity_figure_section_names_its_command() -> None:
    # Each measured section carries the command that produced its figures.
    for command in ("scripts/bench_broker.py", "scripts/bench_storage.py", "scripts/bench_ingest.py",
                    "scripts/bench_cost.py", "scripts/bench_backup.py"):
        assert f".venv/bin/python {command}" in CAPACITY, command
