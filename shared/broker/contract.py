"""The broker contract: who may publish and subscribe to what on Mosquitto, and the broker settings
that keep what it accepts from vanishing.

Everything that talks to or configures the broker takes it from here: the drain (its
subscriptions and end-of-backlog marker), the provisioner (device roles), the local stack and the
tests (service roles, default ACL access, mosquitto.conf), and the infra templates (the same
mosquitto.conf, rendered at deploy time). Nothing restates it.

The rule it exists for: every message a device can get accepted (PUBACK < 128) reaches the
drain's session, so it ends up stored or dead-lettered with a reason. That holds because the
device ACL and the drain's subscriptions are built from one list of topic forms
(DEVICE_PUBLISH_FORMS); anything else a device publishes is refused by the broker (PUBACK 135 for
MQTT 5; MQTT 3.1.1 has no negative PUBACK, so such a device sees nothing, and nothing is stored).

Mosquitto 2.0's dynamic-security plugin has no %u/%c substitution in ACLs, hence one role per
device with its topics spelled out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# -- names -----------------------------------------------------------------------------------------
# Defined once; the SQL CHECKs in sql/migrations repeat them (PostgreSQL cannot import Python), and
# tests/integration/test_broker_contract.py proves the two agree. Neither may contain "." or "/", so the
# username "{tenant}.{device}" and the topics split back unambiguously.
TENANT_SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
DEVICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
METRIC_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
_TENANT_RE = re.compile(TENANT_SLUG_PATTERN)
_DEVICE_RE = re.compile(DEVICE_NAME_PATTERN)


def validate_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
        raise ValueError(f"invalid tenant slug {tenant!r}: expected {TENANT_SLUG_PATTERN}")
    return tenant


def validate_device(device: str) -> str:
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise ValueError(f"invalid device name {device!r}: expected {DEVICE_NAME_PATTERN}")
    return device


# -- topics ----------------------------------------------------------------------------------------
# What a device may publish, below its own prefix t/{tenant}/d/{device}/. "+" is one level (the
# entity of the single-entity form). The drain subscribes to exactly these forms for every device.
DEVICE_PUBLISH_FORMS = ("telemetry", "status", "+/state")
# The one topic a device may subscribe to (and receive on): commands for it. Five levels, so it
# matches none of the publish forms and the drain never receives a command as a reading.
COMMAND_FORM = "cmd"


def device_prefix(tenant: str, device: str) -> str:
    return f"t/{validate_tenant(tenant)}/d/{validate_device(device)}"


def device_publish_topics(tenant: str, device: str) -> list[str]:
    prefix = device_prefix(tenant, device)
    return [f"{prefix}/{form}" for form in DEVICE_PUBLISH_FORMS]


def command_topic(tenant: str, device: str) -> str:
    return f"{device_prefix(tenant, device)}/{COMMAND_FORM}"


DRAIN_SUBSCRIPTIONS = tuple(f"t/+/d/+/{form}" for form in DEVICE_PUBLISH_FORMS)
# The drain's end-of-backlog marker: right after connecting, a run publishes a marker here and the
# broker queues it behind everything already queued for the session, so its return means the
# backlog is drained. Only drain credentials may publish or subscribe below this root.
DRAIN_MARKER_ROOT = "mqtt-saas/drain"


def drain_marker_topic(client_id: str) -> str:
    if not client_id or any(c in client_id for c in "/+#"):
        raise ValueError(f"drain client id {client_id!r} cannot name a topic level")
    return f"{DRAIN_MARKER_ROOT}/{client_id}"


DYNSEC_CONTROL = "$CONTROL/dynamic-security/#"

# -- dynamic-security roles ------------------------------------------------------------------------
AclType = Literal[
    "publishClientSend",
    "publishClientReceive",
    "subscribeLiteral",
    "subscribePattern",
    "unsubscribeLiteral",
    "unsubscribePattern",
]


@dataclass(frozen=True)
class Acl:
    """One ACL entry of a role; a higher priority is checked first."""

    acltype: AclType
    topic: str
    allow: bool = True
    priority: int = 0

    def as_command(self) -> dict[str, object]:
        return {"acltype": self.acltype, "topic": self.topic, "allow": self.allow, "priority": self.priority}


# What a client may do when none of its roles has an ACL for the topic. dynsec init writes its own
# defaults (publishClientReceive allow among them); the contract sets all four explicitly, so every
# right a client has is one of the roles below.
# (setDefaultACLAccess names the subscribe types "subscribe" and "unsubscribe".)
DEFAULT_ACL_ACCESS: dict[str, bool] = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,  # unsubscribing grants nothing
}

PROVISIONER_ROLE = "provisioner"
INGEST_ROLE = "ingest"
PROVISIONER_USERNAME = "mqtt-saas-provisioner"
INGEST_USERNAME = "mqtt-saas-ingest"
INGEST_CLIENT_ID = "mqtt-saas-ingest"
# The admin API's own broker credential: it may publish commands to devices and nothing else (not
# read telemetry, not administer the broker), so a leak of the API's settings cannot take the broker.
COMMANDER_ROLE = "commander"
COMMANDER_USERNAME = "mqtt-saas-commander"


def device_role(tenant: str, device: str) -> str:
    return f"device.{validate_tenant(tenant)}.{validate_device(device)}"


# A device has two credential slots, so a password can be rotated with an overlap: a dynsec client
# has one password (changing it disconnects the client), so the new password goes on the other
# slot's client while the old one still works, and the old slot is deleted when the overlap ends.
# Both slots hold the device's one role. Slot "a" keeps the plain name older devices were given.
CredentialSlot = Literal["a", "b"]
CREDENTIAL_SLOTS: tuple[CredentialSlot, ...] = ("a", "b")


def device_username(tenant: str, device: str, slot: CredentialSlot = "a") -> str:
    """Username and bound client id of one of a device's credentials."""
    base = f"{validate_tenant(tenant)}.{validate_device(device)}"
    if slot not in CREDENTIAL_SLOTS:
        raise ValueError(f"invalid credential slot {slot!r}")
    return base if slot == "a" else f"{base}.{slot}"


def parse_device_username(username: str) -> tuple[str, str, CredentialSlot] | None:
    """(tenant, device, slot) of a device credential's username; None for any other client."""
    parts = username.split(".")
    if len(parts) == 2:
        parts.append("a")
    if len(parts) != 3 or parts[2] not in CREDENTIAL_SLOTS:
        return None
    tenant, device, slot = parts
    if not _TENANT_RE.match(tenant) or not _DEVICE_RE.match(device):
        return None
    return tenant, device, "a" if slot == "a" else "b"


def device_acls(tenant: str, device: str) -> list[Acl]:
    """Publish the contract's forms under its own prefix; subscribe to and receive its command
    topic only (a literal filter, so no wildcard of it is allowed either)."""
    command = command_topic(tenant, device)
    return [
        *(Acl("publishClientSend", topic) for topic in device_publish_topics(tenant, device)),
        Acl("subscribeLiteral", command),
        Acl("publishClientReceive", command),
    ]


def provisioner_acls() -> list[Acl]:
    """The control API has no per-command rights: whoever may publish to it is a full admin of
    the broker (creates clients, changes ACLs). The provisioner gets exactly that and the right to
    read the answers, and none of the admin role's `#` read rights."""
    return [
        Acl("publishClientSend", DYNSEC_CONTROL),
        Acl("subscribePattern", DYNSEC_CONTROL),
        Acl("publishClientReceive", DYNSEC_CONTROL),
    ]


def ingest_acls() -> list[Acl]:
    """The drain reads the device forms, talks to itself on its marker topic, and may publish
    (only) to the device forms so it can clear retained messages (see RETAINED_POLICY)."""
    marker = f"{DRAIN_MARKER_ROOT}/#"
    return [
        *(
            Acl(kind, topic)
            for topic in DRAIN_SUBSCRIPTIONS
            for kind in ("subscribePattern", "publishClientReceive", "publishClientSend")
        ),
        *(Acl(kind, marker) for kind in ("subscribePattern", "publishClientReceive", "publishClientSend")),
    ]


def commander_acls() -> list[Acl]:
    """Publish to any device's command topic (the pattern matches exactly t/{tenant}/d/{device}/cmd),
    nothing else: no subscribe, no receive."""
    return [Acl("publishClientSend", f"t/+/d/+/{COMMAND_FORM}")]


SERVICE_ROLES: dict[str, list[Acl]] = {
    PROVISIONER_ROLE: provisioner_acls(),
    INGEST_ROLE: ingest_acls(),
    COMMANDER_ROLE: commander_acls(),
}


def policy_commands() -> list[dict[str, object]]:
    """The dynamic-security commands that make a broker's default access and service roles exactly the
    contract's: setDefaultACLAccess, and per service role a modifyRole carrying its whole ACL list (which
    replaces the list, so a right the contract dropped is dropped on the broker too). The roles must exist.
    The local stack sends them through shared.broker.dynsec, the VM's bootstrap script through mosquitto_pub."""
    commands: list[dict[str, object]] = [
        {
            "command": "setDefaultACLAccess",
            "acls": [{"acltype": kind, "allow": allow} for kind, allow in DEFAULT_ACL_ACCESS.items()],
        },
    ]
    for role, acls in SERVICE_ROLES.items():
        commands.append({"command": "modifyRole", "rolename": role, "acls": [acl.as_command() for acl in acls]})
    return commands


RETAINED_POLICY = (
    "A device may publish retained messages (a retained birth message and last will are common), "
    "but the broker keeps them only until the next drain run: the drain subscribes with Retain As "
    "Published, and after committing a retained message it clears it (an empty retained publish, "
    "which No Local keeps from coming back to the drain). So at most what devices publish between "
    "two runs is retained, each message within message_size_limit."
)

# -- mosquitto.conf --------------------------------------------------------------------------------
# The settings that decide whether accepted messages survive; the local stack and the VM's
# cloud-init render them with render_mosquitto_conf. Why each value:
BROKER_SETTINGS: dict[str, str] = {
    # Auth and ACLs are global, as dynamic security expects.
    "per_listener_settings": "false",
    "allow_anonymous": "false",
    # Persistence is a snapshot written on graceful shutdown and every autosave_interval seconds:
    # a SIGKILLed broker loses what it had not saved (and redelivers what was acknowledged since,
    # which the dedup key absorbs). 10 s bounds that window; each save rewrites the whole file.
    "persistence": "true",
    "autosave_interval": "10",
    # The default of 1000 silently drops the 1001st message queued for an offline session, i.e.
    # for the drain between two runs. Bounds far above any backlog the drain must absorb, so only
    # a forgotten session reaches them; drops past them are counted in
    # $SYS/broker/publish/messages/dropped. max_queued_bytes is a C int in 2.0.x: >= 2^31 wraps
    # to 0 (unlimited), so stay below 2 GiB.
    "max_queued_messages": "10000000",
    "max_queued_bytes": "1073741824",
    # QoS 0 publishers (Arduino's PubSubClient, for one) would otherwise lose everything they send
    # between runs. Within the same queue limits.
    "queue_qos0_messages": "true",
    # Abandoned device sessions expire. It also caps the Session Expiry a v5 client asks for (the
    # shorter wins), so it must stay above the drain's own (INGEST_SESSION_EXPIRY_S, 7 days).
    "persistent_client_expiration": "14d",
    # The app dead-letters payloads over INGEST_MAX_PAYLOAD_BYTES (64 KiB) itself, so the broker
    # lets them through up to 1 MiB to reach the dead-letter table. Above that Mosquitto 2.0
    # answers a QoS 1 PUBLISH with PUBACK 149 and stores nothing, keeping the connection; 149 is
    # not a PUBACK code in MQTT 5, so strict clients (paho-mqtt 2.2) close the connection
    # themselves. A packet over max_packet_size (advertised in CONNACK; it leaves room for the
    # topic and properties of a 1 MiB payload) gets DISCONNECT 149 from the broker.
    "message_size_limit": "1048576",
    "max_packet_size": "1114112",
    # Without it the broker's small replies (CONNACK) wait ~40 ms for the client's delayed ACK:
    # two thirds of a drain run's fixed cost, measured.
    "set_tcp_nodelay": "true",
}


def render_mosquitto_conf(
    *,
    listener_host: str,
    listener_port: int,
    certfile: str,
    keyfile: str,
    plugin: str,
    dynsec_file: str,
    persistence_dir: str,
    log_dest: str,
) -> str:
    """The whole mosquitto.conf: one TLS listener (no plain-text one) and BROKER_SETTINGS.
    log_dest is a mosquitto log_dest value ("file /path" or "syslog")."""
    lines = [
        "# Rendered from shared/broker/contract.py; edits are lost.",
        f"listener {listener_port} {listener_host}",
        f"certfile {certfile}",
        f"keyfile {keyfile}",
        "tls_version tlsv1.2",  # the minimum: 1.2 and 1.3 are offered
        f"plugin {plugin}",
        f"plugin_opt_config_file {dynsec_file}",
        f"persistence_location {persistence_dir.rstrip('/')}/",
        *(f"{name} {value}" for name, value in BROKER_SETTINGS.items()),
        f"log_dest {log_dest}",
        *(f"log_type {kind}" for kind in ("error", "warning", "notice", "information")),
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    return "\n".join(lines) + "\n"
