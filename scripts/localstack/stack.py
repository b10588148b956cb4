"""PostgreSQL, Mosquitto and Azurite together, started and stopped as one."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from .azurite import AzuriteServer
from .mosquitto import MosquittoBroker
from .postgres import PostgresServer


class LocalStack:
    """PostgreSQL, Mosquitto and Azurite under one folder; ``ports`` may fix any of "postgres", "mosquitto",
    "azurite"."""

    def __init__(self, base_dir: str | os.PathLike[str], ports: Mapping[str, int] | None = None) -> None:
        ports = dict(ports or {})
        unknown = set(ports) - {"postgres", "mosquitto", "azurite"}
        if unknown:
            raise ValueError(f"unknown services in ports: {sorted(unknown)}")
        self.base_dir = Path(base_dir).resolve()
        self.postgres = PostgresServer(self.base_dir / "postgres", ports.get("postgres"))
        self.mosquitto = MosquittoBroker(self.base_dir / "mosquitto", ports.get("mosquitto"))
        self.azurite = AzuriteServer(self.base_dir / "azurite", ports.get("azurite"))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self.postgres.start()
            self.mosquitto.start()
            self.azurite.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop all three, even if one of them fails to stop; then report the first failure."""
        errors: list[BaseException] = []
        for server in (self.azurite, self.mosquitto, self.postgres):
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - the others must still be stopped
                errors.append(exc)
        if errors:
            raise errors[0]

    def environment(self) -> dict[str, str]:
        """The app settings this stack can fill (the database roles are the migrations' business)."""
        broker = self.mosquitto
        return {
            "MQTT_HOST": broker.host,
            "MQTT_PORT": str(broker.port),
            "MQTT_CA_FILE": str(broker.ca_file),
            "MQTT_INGEST_USERNAME": broker.ingest.username,
            "MQTT_INGEST_PASSWORD": broker.ingest.password,
            "MQTT_INGEST_CLIENT_ID": broker.ingest.client_id or "",
            "MQTT_PROVISIONER_USERNAME": broker.provisioner.username,
            "MQTT_PROVISIONER_PASSWORD": broker.provisioner.password,
            "STORAGE_CONNECTION_STRING": self.azurite.connection_string,
        }

    def create_app_database(self, name: str) -> dict[str, str]:
        """A new database migrated from sql/migrations, the application roles given fresh login passwords, and
        the full app settings to reach it: for benchmarks, which need a database of their own but no test
        harness. (The roles are cluster-wide: their passwords change for every database of this cluster.)"""
        import secrets

        import psycopg
        from psycopg import sql

        from shared.core.migrate import apply_migrations

        postgres = self.postgres
        with psycopg.connect(postgres.superuser_dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        apply_migrations(postgres.superuser_dsn(name))
        passwords = {role: secrets.token_hex(16) for role in ("mqtt_saas_app", "mqtt_saas_ingest")}
        with psycopg.connect(postgres.superuser_dsn(), autocommit=True) as conn:
            for role, password in passwords.items():
                conn.execute(
                    sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
                )
        where = f"@{postgres.host}:{postgres.port}/{name}"
        return self.environment() | {
            "DATABASE_URL": f"postgresql://mqtt_saas_app:{passwords['mqtt_saas_app']}{where}",
            "INGEST_DATABASE_URL": f"postgresql://mqtt_saas_ingest:{passwords['mqtt_saas_ingest']}{where}",
        }
