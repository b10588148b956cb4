"""Tenants and devices: the rows, and each device's broker credential.

A device exists in two places: its row here (which the drain routes by) and its dynamic-security
client on the broker (which lets it publish under its own topic prefix only). The row is written
first, so a device can never publish before the drain knows it.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from psycopg_pool import ConnectionPool

from shared.db import tenant_transaction
from shared.dynsec import DynsecClient, generate_password
from shared.sql import QUERIES


@dataclass(frozen=True)
class DeviceCredential:
    tenant: str
    device: str
    username: str
    client_id: str
    password: str

    @property
    def topic_prefix(self) -> str:
        return f"t/{self.tenant}/d/{self.device}"


def create_tenant(pool: ConnectionPool, slug: str, name: str, plan: str = "free") -> dict:
    tenant_id = uuid.uuid4()
    with tenant_transaction(pool, str(tenant_id)) as conn:
        return conn.execute(QUERIES["insert_tenant"], {"id": tenant_id, "slug": slug, "name": name, "plan": plan}).fetchone()


def create_device(pool: ConnectionPool, tenant_id: str, name: str, display_name: str | None = None) -> dict:
    with tenant_transaction(pool, tenant_id) as conn:
        return conn.execute(
            QUERIES["insert_device"], {"tenant_id": tenant_id, "name": name, "display_name": display_name}
        ).fetchone()


def set_device_enabled(pool: ConnectionPool, tenant_id: str, name: str, enabled: bool) -> bool:
    with tenant_transaction(pool, tenant_id) as conn:
        return conn.execute(
            QUERIES["set_device_enabled"], {"tenant_id": tenant_id, "name": name, "enabled": enabled}
        ).fetchone() is not None


def provision_device(pool: ConnectionPool, dynsec: DynsecClient, tenant: dict, name: str) -> DeviceCredential:
    """Creates the device row, then its broker credential; returns the one-time password."""
    create_device(pool, str(tenant["id"]), name)
    password = generate_password()
    username = dynsec.provision_device(tenant["slug"], name, password)
    return DeviceCredential(tenant["slug"], name, username, username, password)
