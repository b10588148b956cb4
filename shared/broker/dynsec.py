"""Client for Mosquitto's dynamic-security control API (one credential and one role per device).

The plugin listens on ``$CONTROL/dynamic-security/v1`` and answers every admin on the shared topic
``$CONTROL/dynamic-security/v1/response`` (QoS 0), so each command carries a unique ``correlationData`` and we
subscribe before publishing. Mosquitto 2.0.x has no ``%u``/``%c`` substitution in dynsec ACLs, hence one role per
device. A ``DynsecClient`` is used from one thread at a time; open one per unit of work::

    with DynsecClient(host, port, ca_file, username, password) as dynsec:
        dynsec.provision_device("acme", "pump-7", generate_password())
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import Collection, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

from paho.mqtt.client import Client, MQTTMessage
from pydantic import SecretStr

from shared.broker.contract import DEFAULT_ACL_ACCESS, Acl, device_acls, device_role, device_username
from shared.broker.mqtt import BlockingConnection
from shared.core import observability
from shared.core.exceptions import BrokerUnavailable, DynsecError

log = logging.getLogger(__name__)

REQUEST_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"

# Error texts of the 2.0.x plugin that the ensure_/missing_ok variants treat as "already in the wanted state".
CLIENT_EXISTS = "Client already exists"
ROLE_EXISTS = "Role already exists"
CLIENT_NOT_FOUND = "Client not found"
ROLE_NOT_FOUND = "Role not found"


def generate_password() -> str:
    """A random 192-bit password: the plugin hashes with only 101 PBKDF2 rounds in 2.0.x, so length is the defence."""
    return secrets.token_urlsafe(24)


class DynsecClient(BlockingConnection):
    """An admin connection to the dynamic-security plugin."""

    def __init__(
        self,
        host: str,
        port: int,
        ca_file: str | None,
        username: str,
        password: str | SecretStr,
        timeout: float = 10.0,
        client_id: str | None = None,
    ) -> None:
        super().__init__(host, port, ca_file, username, password, timeout)
        # Admin connections are short-lived and never share a session: a random id cannot kick another admin.
        self.client_id = client_id or f"dynsec-{username}-{secrets.token_hex(4)}"
        self._responses: dict[str, dict[str, Any] | None] = {}

    # -- connection ------------------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def connect(self) -> None:
        deadline = time.monotonic() + self.timeout
        connack = self._open(self.client_id, keepalive=max(5, int(self.timeout * 3)))
        try:
            if connack.is_failure:
                raise BrokerUnavailable(f"MQTT broker refused the connection: {connack.getName()}")
            granted = self._subscribe_and_wait(RESPONSE_TOPIC, deadline)
            if granted.is_failure:
                raise DynsecError(f"not allowed to subscribe to {RESPONSE_TOPIC}: {granted.getName()}")
        except BaseException:
            self.close()
            raise
        observability.event(log, "dynsec.connected", {"mqtt_username": self.username}, logging.DEBUG)

    def _bind(self, client: Client) -> None:
        client.on_message = self._on_message

    # -- commands --------------------------------------------------------------------------------------------------

    def execute(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run commands in order in one request and return their responses (``data`` holds what get/list return).

        Each command gets its own correlationData (any given is replaced). Raises DynsecError naming every command
        that failed, with the plugin's error text; BrokerUnavailable when the broker does not answer in time.
        """
        return self._execute(commands, tolerated=())

    def _execute(self, commands: list[dict[str, Any]], tolerated: Collection[str]) -> list[dict[str, Any]]:
        client = self._client
        if client is None:
            raise BrokerUnavailable("DynsecClient is not connected")
        if not commands:
            return []
        deadline = time.monotonic() + self.timeout
        ids = [uuid.uuid4().hex for _ in commands]
        payload = {
            "commands": [{**command, "correlationData": cid} for command, cid in zip(commands, ids, strict=True)]
        }
        with self._cond:
            self._responses.update((cid, None) for cid in ids)
        try:
            puback = self._publish_and_wait(REQUEST_TOPIC, json.dumps(payload), deadline)
            if puback.is_failure:
                # The broker checks ACLs before the plugin sees anything: a v5 PUBACK 135 means this credential
                # is not an admin.
                raise DynsecError(f"broker refused the dynsec request: {puback.getName()}")
            self._wait(lambda: all(self._responses[cid] is not None for cid in ids), deadline, "dynsec response")
            with self._cond:
                responses = [self._responses[cid] or {} for cid in ids]
        finally:
            with self._cond:
                for cid in ids:
                    self._responses.pop(cid, None)
        failures = [
            f"{command.get('command')} {_subject(command)}: {response['error']}"
            for command, response in zip(commands, responses, strict=True)
            if "error" in response and response["error"] not in tolerated
        ]
        if failures:
            raise DynsecError("; ".join(failures))
        return responses

    def create_role(self, name: str, acls: Iterable[Acl | Mapping[str, Any]] = ()) -> None:
        self.execute([_create_role(name, acls)])

    def ensure_role(self, name: str, acls: Iterable[Acl | Mapping[str, Any]] = ()) -> bool:
        """Create the role unless one of that name exists (its ACLs are then left as they are). True if created."""
        (response,) = self._execute([_create_role(name, acls)], tolerated=(ROLE_EXISTS,))
        return "error" not in response

    def set_role_acls(self, name: str, acls: Iterable[Acl]) -> None:
        """Make the role's ACLs exactly ``acls`` (creating the role if needed): for roles whose rights the contract
        defines, so a broker set up by an older version gets today's rights. modifyRole replaces the whole list."""
        self.ensure_role(name)
        self.execute([{"command": "modifyRole", "rolename": name, "acls": [acl.as_command() for acl in acls]}])

    def get_role_acls(self, name: str) -> list[dict[str, Any]]:
        (response,) = self.execute([{"command": "getRole", "rolename": name}])
        acls: list[dict[str, Any]] = response.get("data", {}).get("role", {}).get("acls", [])
        return acls

    def set_default_acl_access(self, access: Mapping[str, bool] = DEFAULT_ACL_ACCESS) -> None:
        """What a client may do where none of its roles says: set explicitly, never left to ``dynsec init``."""
        acls = [{"acltype": kind, "allow": allow} for kind, allow in access.items()]
        self.execute([{"command": "setDefaultACLAccess", "acls": acls}])

    def get_default_acl_access(self) -> dict[str, bool]:
        (response,) = self.execute([{"command": "getDefaultACLAccess"}])
        return {acl["acltype"]: acl["allow"] for acl in response.get("data", {}).get("acls", [])}

    def delete_role(self, name: str, missing_ok: bool = False) -> None:
        self._execute([{"command": "deleteRole", "rolename": name}], (ROLE_NOT_FOUND,) if missing_ok else ())

    def create_client(
        self, username: str, password: str, client_id: str | None = None, roles: Iterable[str] = ()
    ) -> None:
        self.execute([_create_client(username, password, client_id, roles)])

    def ensure_client(
        self, username: str, password: str, client_id: str | None = None, roles: Iterable[str] = ()
    ) -> bool:
        """Create the client unless that username exists (it is then left as it is). True if created."""
        (response,) = self._execute([_create_client(username, password, client_id, roles)], (CLIENT_EXISTS,))
        return "error" not in response

    def get_client(self, username: str) -> dict[str, Any]:
        (response,) = self.execute([{"command": "getClient", "username": username}])
        client: dict[str, Any] = response.get("data", {}).get("client", {})
        return client

    def delete_client(self, username: str, missing_ok: bool = False) -> None:
        """Delete the client; the broker disconnects its live sessions."""
        self._execute([{"command": "deleteClient", "username": username}], (CLIENT_NOT_FOUND,) if missing_ok else ())

    def disable_client(self, username: str) -> None:
        """Refuse the client's future connections; the broker disconnects its live sessions."""
        self.execute([{"command": "disableClient", "username": username}])

    def enable_client(self, username: str) -> None:
        self.execute([{"command": "enableClient", "username": username}])

    def set_client_password(self, username: str, password: str) -> None:
        """Replace the one password of the client; the broker disconnects its live sessions."""
        _require_password(password)
        self.execute([{"command": "setClientPassword", "username": username, "password": password}])

    def provision_device(self, tenant: str, device: str, password: str) -> str:
        """Create the device's role and credential in one request; return its username (= bound client id).

        The role is created unless it exists (a leftover of an earlier attempt has the same ACLs by construction);
        an existing credential raises DynsecError. Binding the client id stops a device credential from taking over
        another client's id, for instance kicking the ingest drain.
        """
        username = device_username(tenant, device)
        role = device_role(tenant, device)
        self._execute(
            [
                _create_role(role, device_acls(tenant, device)),
                _create_client(username, password, client_id=username, roles=[role]),
            ],
            tolerated=(ROLE_EXISTS,),
        )
        observability.event(log, "dynsec.device_provisioned", {"tenant_slug": tenant, "device_name": device})
        return username

    def deprovision_device(self, tenant: str, device: str) -> None:
        """Delete the device's credential (kicking its sessions) and role; absent ones are fine."""
        self._execute(
            [
                {"command": "deleteClient", "username": device_username(tenant, device)},
                {"command": "deleteRole", "rolename": device_role(tenant, device)},
            ],
            tolerated=(CLIENT_NOT_FOUND, ROLE_NOT_FOUND),
        )
        observability.event(log, "dynsec.device_deprovisioned", {"tenant_slug": tenant, "device_name": device})

    def execute_tolerating(self, commands: list[dict[str, Any]], tolerated: Collection[str]) -> list[dict[str, Any]]:
        """execute(), treating the plugin's error texts in ``tolerated`` as success (for idempotent replays)."""
        return self._execute(commands, tolerated)

    def list_clients(self) -> list[dict[str, Any]]:
        """Every client with its details (username, clientid, roles, disabled when it is)."""
        (response,) = self.execute([{"command": "listClients", "verbose": True}])
        clients: list[dict[str, Any]] = response.get("data", {}).get("clients", [])
        return clients

    def list_roles(self) -> list[dict[str, Any]]:
        """Every role with its ACLs."""
        (response,) = self.execute([{"command": "listRoles", "verbose": True}])
        roles: list[dict[str, Any]] = response.get("data", {}).get("roles", [])
        return roles

    def put_device_client(self, username: str, password: str, role: str) -> None:
        """Make the device client ``username`` exist with this password, bound client id and only ``role``,
        whether or not it existed (a replayed or repeated command ends in the same state)."""
        _require_password(password)
        (created,) = self._execute(
            [_create_client(username, password, client_id=username, roles=[role])], tolerated=(CLIENT_EXISTS,)
        )
        if "error" not in created:
            return
        # Only when it existed: the plugin rewrites its whole config file after every change, so a
        # new client costs one command, not four.
        self.execute(
            [
                {"command": "setClientPassword", "username": username, "password": password},
                {"command": "setClientId", "username": username, "clientid": username},
                {"command": "modifyClient", "username": username, "roles": [{"rolename": role, "priority": 0}]},
            ]
        )

    def put_role(self, name: str, acls: Iterable[Acl]) -> None:
        """Make the role exist with exactly ``acls`` (modifyRole, which replaces the list, only when it existed)."""
        commands = [acl.as_command() for acl in acls]
        (created,) = self._execute(
            [{"command": "createRole", "rolename": name, "acls": commands}], tolerated=(ROLE_EXISTS,)
        )
        if "error" in created:
            self.execute([{"command": "modifyRole", "rolename": name, "acls": commands}])

    # -- paho callbacks (network thread) ---------------------------------------------------------------------------

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        try:
            responses = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            observability.event(log, "dynsec.malformed_response", {"topic": message.topic}, logging.WARNING)
            return
        with self._cond:
            for response in responses:
                cid = response.get("correlationData") if isinstance(response, dict) else None
                # Other admins' answers arrive on the same topic; only ours are waited for.
                if cid in self._responses:
                    self._responses[cid] = response
            self._cond.notify_all()


def _subject(command: Mapping[str, Any]) -> str:
    return str(command.get("username") or command.get("rolename") or command.get("groupname") or "")


def _require_password(password: str) -> None:
    if not isinstance(password, str) or not password:
        raise ValueError("password must be a non-empty string")


def _create_role(name: str, acls: Iterable[Acl | Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "command": "createRole",
        "rolename": name,
        "acls": [acl.as_command() if isinstance(acl, Acl) else dict(acl) for acl in acls],
    }


def _create_client(username: str, password: str, client_id: str | None, roles: Iterable[str]) -> dict[str, Any]:
    _require_password(password)
    command: dict[str, Any] = {
        "command": "createClient",
        "username": username,
        "password": password,
        "roles": [{"rolename": role, "priority": 0} for role in roles],
    }
    if client_id is not None:
        command["clientid"] = client_id
    return command
