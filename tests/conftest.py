"""Test harness: real PostgreSQL, Mosquitto and Azurite (tests/stack_fixtures.py), a template
database built once from sql/migrations, and a fresh clone of it for every test that asks."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg_pool import ConnectionPool
from pydantic import SecretStr

from shared.core.migrate import apply_migrations
from shared.core.settings import Settings, get_settings, settings_from
from shared.ingest.drain import drop_session

pytest_plugins = ["tests.stack_fixtures"]

TEMPLATE_DB = "mqtt_saas_template"

# A test whose fixtures reach one of these needs a server; every other test is in the fast tier
# (`scripts/test --fast`). A test that starts a server without them says so with @pytest.mark.server.
SERVER_FIXTURES = frozenset({"postgres_server", "mosquitto_broker", "azurite_server", "browser", "host"})
_PROJECT_ENV_PREFIXES = ("DATABASE_", "INGEST_", "MQTT_", "STORAGE_")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures.isdisjoint(SERVER_FIXTURES) and item.get_closest_marker("server") is None:
            item.add_marker(pytest.mark.fast)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests see none of the developer's own settings, and settings are re-read per test."""
    for key in list(os.environ):
        if key.startswith(_PROJECT_ENV_PREFIXES):
            monkeypatch.delenv(key)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@dataclass(frozen=True)
class Database:
    name: str
    owner_dsn: str
    app_dsn: str
    ingest_dsn: str
    maintenance_dsn: str


@pytest.fixture(scope="session")
def role_passwords(postgres_server) -> dict[str, str]:
    """Login passwords for the application roles the migrations create (cluster-wide)."""
    with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    apply_migrations(postgres_server.superuser_dsn(TEMPLATE_DB))
    passwords = {role: secrets.token_hex(16) for role in ("mqtt_saas_app", "mqtt_saas_ingest", "mqtt_saas_maintenance")}
    with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
        for role, password in passwords.items():
            conn.execute(f"ALTER ROLE {role} LOGIN PASSWORD '{password}'")
    return passwords


@pytest.fixture
def database(postgres_server, role_passwords) -> Iterator[Database]:
    """A private database cloned from the migrated template: fast, and isolated per test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    host, port = "127.0.0.1", postgres_server.port
    yield Database(
        name=name,
        owner_dsn=postgres_server.superuser_dsn(name),
        app_dsn=f"postgresql://mqtt_saas_app:{role_passwords['mqtt_saas_app']}@{host}:{port}/{name}",
        ingest_dsn=f"postgresql://mqtt_saas_ingest:{role_passwords['mqtt_saas_ingest']}@{host}:{port}/{name}",
        maintenance_dsn=(
            f"postgresql://mqtt_saas_maintenance:{role_passwords['mqtt_saas_maintenance']}@{host}:{port}/{name}"
        ),
    )
    with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def app_pool(database: Database) -> Iterator[ConnectionPool]:
    from shared.core.db import create_pool

    pool = create_pool(settings_from({"DATABASE_URL": database.app_dsn, "INGEST_DATABASE_URL": database.ingest_dsn}))
    yield pool
    pool.close()


@pytest.fixture
def maintenance_settings(database: Database) -> Settings:
    """Settings with the maintenance role (rollups, retention, the archive) on this test's database."""
    return settings_from(
        {
            "DATABASE_URL": database.app_dsn,
            "INGEST_DATABASE_URL": database.ingest_dsn,
            "MAINTENANCE_DATABASE_URL": database.maintenance_dsn,
        }
    )


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, database: Database) -> Iterator[None]:
    """The admin API on this test's database (settings exported for get_settings(), a fresh pool closed after)."""
    from tests.support.api import close_api_pool, export_api_settings

    export_api_settings(monkeypatch, database)
    yield
    close_api_pool()


@pytest.fixture
def broker_api(monkeypatch: pytest.MonkeyPatch, database: Database, settings: Settings) -> Iterator[Settings]:
    """The admin API with the live broker too (settings exports the MQTT_* keys): device changes provision
    their credentials. Yields the settings, for clients of the broker."""
    from tests.support.api import close_api_pool, export_api_settings

    export_api_settings(monkeypatch, database)
    yield settings
    close_api_pool()


@pytest.fixture
def ingest_identity(mosquitto_broker) -> Iterator[tuple[str, str]]:
    """A drain credential of this test's own, so no test inherits another's queued messages.
    Bound to its client id like the real one."""
    from shared.broker.dynsec import generate_password

    username = f"ingest-{uuid.uuid4().hex[:10]}"
    password = generate_password()
    with _dynsec(mosquitto_broker) as dynsec:
        dynsec.create_client(username, password, client_id=username, roles=["ingest"])
    yield username, password
    with _dynsec(mosquitto_broker) as dynsec:
        dynsec.delete_client(username, missing_ok=True)


@pytest.fixture
def make_settings(database: Database, mosquitto_broker, ingest_identity) -> Iterator:
    """Settings as the app would read them, pointing at this test's database and broker."""
    username, password = ingest_identity

    def build(**overrides: object) -> Settings:
        values = {
            "DATABASE_URL": database.app_dsn,
            "INGEST_DATABASE_URL": database.ingest_dsn,
            "MQTT_HOST": mosquitto_broker.host,
            "MQTT_PORT": str(mosquitto_broker.port),
            "MQTT_CA_FILE": str(mosquitto_broker.ca_file),
            "MQTT_INGEST_USERNAME": username,
            "MQTT_INGEST_PASSWORD": password,
            "MQTT_INGEST_CLIENT_ID": username,
            "MQTT_PROVISIONER_USERNAME": mosquitto_broker.provisioner.username,
            "MQTT_PROVISIONER_PASSWORD": mosquitto_broker.provisioner.password,
            "INGEST_IDLE_EXIT_S": "1.5",
            "INGEST_TIME_BUDGET_S": "60",
        }
        values.update({key: str(value) for key, value in overrides.items()})
        return settings_from(values)

    yield build
    # The broker would otherwise keep queuing every later test's messages for this session.
    drop_session(build())


@pytest.fixture
def settings(make_settings, settings_env) -> Settings:
    """This test's settings, exported for get_settings(), with the drain's session primed as a
    deployment would, so what devices publish before the first run is queued for it."""
    from shared.ingest.drain import prepare_session

    primed = settings_env(make_settings())
    prepare_session(primed)
    return primed


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch):
    """Exports a Settings' values as environment variables, for code that calls get_settings()."""

    def export(settings: Settings) -> Settings:
        for name, field in Settings.model_fields.items():
            value = getattr(settings, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                monkeypatch.setenv(field.alias, str(value))
        get_settings.cache_clear()
        return settings

    return export


def _dynsec(broker):
    from shared.broker.dynsec import DynsecClient

    admin = broker.admin
    return DynsecClient(broker.host, broker.port, str(broker.ca_file), admin.username, admin.password)
