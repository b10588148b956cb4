"""pytest plugin: one private PostgreSQL, Mosquitto and Azurite per test session (scripts/localstack/).

Each starts on first use, under the session's temporary folder on free ports, and is stopped at the end of the run,
also when a test or the start itself failed. Load it with ``pytest_plugins = ["tests.stack_fixtures"]`` or
``-p tests.stack_fixtures``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scripts.localstack import AzuriteServer, MosquittoBroker, PostgresServer


def _running(server):
    """Starts a server for the session and stops it at the end, also when a test or the start failed."""
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    yield from _running(PostgresServer(tmp_path_factory.mktemp("postgres")))


@pytest.fixture(scope="session")
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    yield from _running(MosquittoBroker(tmp_path_factory.mktemp("mosquitto")))


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    yield from _running(AzuriteServer(tmp_path_factory.mktemp("azurite")))
