"""Tenants and devices: the rows, and each device's broker credential.

A device exists in two places: its row here (which the drain routes by) and its dynamic-security
client on the broker (which lets it publish under its own topic prefix only). The row is written
first, so a device can never publish before the drain knows it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from shared.broker.contract import device_username
from shared.broker.dynsec import DynsecClient, generate_password
from shared.core.db import DictPool, tenant_transaction
from shared.core.sql import QUERIES, one_row


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


def create_tenant(pool: DictPool, slug: str, name: str, plan: str = "free") -> dict[str, Any]:
    tenant_id = uuid.uuid4()
    with tenant_transaction(pool, str(tenant_id)) as conn:
        return one_row(
            conn.execute(QUERIES["insert_tenant"], {"id": tenant_id, "slug": slug, "name": name, "plan": plan}),
            "insert_tenant",
        )


def create_device(pool: DictPool, tenant_id: str, name: str, display_name: str | None = None) -> dict[str, Any]:
    with tenant_transaction(pool, tenant_id) as conn:
        return one_row(
            conn.execute(
                QUERIES["insert_device"], {"tenant_id": tenant_id, "name": name, "display_name": display_name}
            ),
            "insert_device",
        )


def set_device_enabled(pool: DictPool, tenant_id: str, name: str, enabled: bool) -> bool:
    with tenant_transaction(pool, tenant_id) as conn:
        return (
            conn.execute(
                QUERIES["set_device_enabled"], {"tenant_id": tenant_id, "name": name, "enabled": enabled}
            ).fetchone()
            is not None
        )


def provision_device(pool: DictPool, dynsec: DynsecClient, tenant: Mapping[str, Any], name: str) -> DeviceCredential:
    """Creates the device row and its credential row (slot a), then its broker credential directly
    (no outbox: for the local stack and tests, which hold a DynsecClient); returns the one-time
    password. The credential row keeps the broker_sync reconciliation from deleting the client
    as unknown."""
    tenant_id = str(tenant["id"])
    username = device_username(tenant["slug"], name)
    with tenant_transaction(pool, tenant_id) as conn:
        device = one_row(
            conn.execute(QUERIES["insert_device"], {"tenant_id": tenant_id, "name": name, "display_name": None}),
            "insert_device",
        )
        conn.execute(
            QUERIES["insert_credentials"],
            {"tenant_id": tenant_id, "rows": Jsonb([{"device_id": device["id"], "slot": "a", "username": username}])},
        )
    password = generate_password()
    username = dynsec.provision_device(tenant["slug"], name, password)
    return DeviceCredential(tenant["slug"], name, username, username, password)
