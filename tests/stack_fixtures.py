"""pytest plugin: one private PostgreSQL, Mosquitto and Azurite per test session (scripts/localstack.py).

Each starts on first use, under the session's temporary folder on free ports, and is stopped at the end of the run,
also when a test or the start itself failed. Load it with ``pytest_plugins = ["tests.stack_fixtures"]`` or
``-p tests.stack_fixtures``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scripts.localstack import AzuriteServer, MosquittoBroker, PostgresServer


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"))
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    server = AzuriteServer(tmp_path_factory.mktemp("azurite"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
