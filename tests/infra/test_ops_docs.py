"""The docs cite only what exists: every operator query in infra/queries (each one at least once in the runbook),
every script the README and docs/ name, every benchmark command (each benchmark in docs/benchmarks.md, each
capacity figure with the command that measured it); so a renamed file breaks a test, not an incident at 3 a.m."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = (REPO / "docs" / "runbook.md").read_text()
CAPACITY = (REPO / "docs" / "capacity.md").read_text()
BENCHMARKS = (REPO / "docs" / "benchmarks.md").read_text()
PAGES = {
    path.relative_to(REPO).as_posix(): path.read_text()
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
}


def script_exists(script: str) -> bool:
    return (REPO / script).exists()


def benchmark_names() -> set[str]:
    # A benchmark is a script (it runs as __main__); a helper module beside them is not one.
    return {path.stem for path in (REPO / "scripts" / "bench").glob("*.py") if "__main__" in path.read_text()}


def test_the_runbook_cites_every_operator_query_and_only_existing_ones() -> None:
    queries = {path.name for path in (REPO / "infra" / "queries").glob("*.kql")}
    cited = set(re.findall(r"\b([a-z_]+\.kql)\b", RUNBOOK))
    assert cited - queries == set(), "the runbook cites queries that do not exist"
    assert queries - cited == set(), "queries the runbook never uses"


def test_the_docs_name_only_scripts_that_exist() -> None:
    assert "docs/runbook.md" in PAGES and "docs/capacity.md" in PAGES and "README.md" in PAGES
    for page, document in PAGES.items():
        for script in set(re.findall(r"\b(scripts/[A-Za-z_][A-Za-z0-9_./-]*[A-Za-z0-9])", document)):
            assert script_exists(script), f"{page}: {script}"


def test_every_capacity_figure_section_names_its_command() -> None:
    # Each measured section carries the command that produced its figures.
    for command in (
        "scripts/bench/broker.py",
        "scripts/bench/storage.py",
        "scripts/bench/ingest.py",
        "scripts/bench/cost.py",
        "scripts/bench/backup.py",
    ):
        assert f".venv/bin/python {command}" in CAPACITY, command


def test_the_benchmarks_page_gives_every_benchmark_its_command() -> None:
    names = benchmark_names()
    assert len(names) >= 12, names
    for name in sorted(names):
        assert f".venv/bin/python scripts/bench/{name}.py" in BENCHMARKS, name
        assert f"| `{name}.py` |" in BENCHMARKS, f"{name}: no row in the figures table"
