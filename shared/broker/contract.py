"""The broker contract: who may publish and subscribe to what on Mosquitto, and the broker settings
that keep what it accepts from vanishing.

Everything that talks to or configures the broker takes it from here: the drain (its
subscriptions and end-of-backlog marker), the provisioner (device roles), the local stack and the
tests (service roles, default ACL access, mosquitto.conf), and the infra templates (the same
mosquitto.conf, rendered at deploy time). Nothing restates it.

The rule it exists for: every message a device can get accepted (PUBACK < 128) reaches the
drain's session, so it ends up stored or dead-lettered with a reason. That holds because the
device ACL allows only forms below the device tree and the Sparkplug filters the drain subscribes to
(DRAIN_SUBSCRIPTIONS): the native forms (DEVICE_PUBLISH_FORMS) and those its profile declares;
anything else a device publishes is refused by the broker (PUBACK 135 for MQTT 5; MQTT 3.1.1 has no
negative PUBACK, so such a device sees nothing, and nothing is stored).

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
# What every device may publish, below its own prefix t/{tenant}/d/{device}/: the native forms. "+" is
# one level (the entity of the single-entity form).
DEVICE_PUBLISH_FORMS = ("telemetry", "status", "+/state")
# The one topic a device may subscribe to (and receive on) under every profile: commands for it. No
# profile may publish below it, so the drain never takes a command for a reading.
COMMAND_FORM = "cmd"


def device_prefix(tenant: str, device: str) -> str:
    return f"t/{validate_tenant(tenant)}/d/{validate_device(device)}"


def command_topic(tenant: str, device: str) -> str:
    return f"{device_prefix(tenant, device)}/{COMMAND_FORM}"


# -- device profiles -------------------------------------------------------------------------------
# A device's profile (shared/ingest/profiles.py) says which further forms below its prefix it publishes
# (Tasmota's tele/SENSOR, Shelly's events/rpc, ...) and may subscribe to (Tasmota's cmnd/#), or that
# it is a Sparkplug B edge node. Its broker role allows exactly the native forms and its profile's, so
# an undeclared topic is still refused. A form is 1 to 6 levels; "+" stands for one whole level, "#"
# may end a subscribe form only; no form starts with the command level or repeats a native form.
PROFILE_FORM_LEVEL_PATTERN = r"^(\+|[A-Za-z0-9_:%=.-]{1,64})$"
MAX_PROFILE_FORMS = 32
MAX_FORM_LEVELS = 6
_FORM_LEVEL_RE = re.compile(PROFILE_FORM_LEVEL_PATTERN)


def validate_profile_form(form: str, *, subscribe: bool = False) -> str:
    """A profile's topic form below the device prefix, or ValueError saying what is wrong with it."""
    if not isinstance(form, str) or not form:
        raise ValueError("a topic form is a non-empty string such as 'tele/SENSOR'")
    levels = form.split("/")
    if len(levels) > MAX_FORM_LEVELS:
        raise ValueError(f"topic form {form!r} has more than {MAX_FORM_LEVELS} levels")
    body = levels[:-1] if subscribe and levels[-1] == "#" else levels
    if not body:
        raise ValueError(f"topic form {form!r} must name at least one level before '#'")
    for level in body:
        if not _FORM_LEVEL_RE.match(level):
            raise ValueError(
                f"topic form {form!r}: level {level[:64]!r} must be '+' or match {PROFILE_FORM_LEVEL_PATTERN}"
            )
    if levels[0] in (COMMAND_FORM, "+"):
        raise ValueError(f"topic form {form!r} may not start with {levels[0]!r} (the command topic: {COMMAND_FORM!r})")
    if not subscribe and _matches_native(levels):
        raise ValueError(f"topic form {form!r} is a native form: every profile includes those already")
    return form


def _matches_native(levels: list[str]) -> bool:
    """Whether a form could name a native topic (whose messages the drain reads as native)."""
    return (len(levels) == 1 and levels[0] in ("telemetry", "status", "+")) or (
        len(levels) == 2 and levels[1] in ("state", "+")
    )


@dataclass(frozen=True)
class ProfileTopics:
    """The broker side of a profile: what its devices publish and subscribe to besides the native forms."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    sparkplug: bool = False


NATIVE_TOPICS = ProfileTopics()
# The built-in profiles' forms; their decoders (shared/ingest/builtin_profiles.py) declare the same
# forms, and tests/unit/test_profiles.py proves the two agree.
BUILTIN_PROFILE_TOPICS: dict[str, ProfileTopics] = {
    "native": NATIVE_TOPICS,
    # FullTopic t/{tenant}/d/%topic%/%prefix%/ with Topic = the device name (docs/profiles.md).
    "tasmota": ProfileTopics(
        publish=(
            "tele/LWT",
            "tele/STATE",
            "tele/SENSOR",
            "stat/POWER",
            *(f"stat/POWER{n}" for n in range(1, 9)),
        ),
        subscribe=("cmnd/#",),
    ),
    # Topic prefix t/{tenant}/d/{device}, RPC status notifications over MQTT on.
    "shelly-gen2": ProfileTopics(publish=("online", "events/rpc"), subscribe=("rpc", "command", "command/+")),
    # ESPHome topic_prefix t/{tenant}/d/{device}, discovery_prefix t/{tenant}/d/{device}/homeassistant.
    "homeassistant-discovery": ProfileTopics(
        publish=("homeassistant/+/+/config", "homeassistant/+/+/+/config", "+/+/state"),
        subscribe=("+/+/command", "homeassistant/status"),
    ),
    "sparkplug-b": ProfileTopics(sparkplug=True),
}
BUILTIN_PROFILES = tuple(BUILTIN_PROFILE_TOPICS)


def profile_topics(
    builtin: str | None, publish_forms: list[str] | None = None, subscribe_forms: list[str] | None = None
) -> ProfileTopics:
    """A device's topics from what the database keeps: a built-in's name, or a tenant profile's forms."""
    if builtin is not None:
        return BUILTIN_PROFILE_TOPICS.get(builtin, NATIVE_TOPICS)
    return ProfileTopics(tuple(publish_forms or ()), tuple(subscribe_forms or ()))


# -- Sparkplug B -----------------------------------------------------------------------------------
# Sparkplug's namespace is fixed: spBv1.0/{group id}/{message type}/{edge node id}[/{device id}]. The
# contract maps it onto ours: group id = the tenant slug, edge node id = the device name; the node's
# own devices (DBIRTH ...) are sub-devices of that one device. Node Control commands (the drain's
# rebirth requests) go to NCMD through the commander.
SPARKPLUG_NAMESPACE = "spBv1.0"
SPARKPLUG_NODE_TYPES = ("NBIRTH", "NDATA", "NDEATH")
SPARKPLUG_DEVICE_TYPES = ("DBIRTH", "DDATA", "DDEATH")
# The drain's persistent session is the primary host: it receives everything the broker accepts, also
# between runs. Each run publishes its STATE retained as online (no will: the session outlives the run),
# so a gateway configured with this primary host id publishes, and keeps publishing between runs.
SPARKPLUG_HOST_ID = "mqtt-saas"
SPARKPLUG_STATE_TOPIC = f"{SPARKPLUG_NAMESPACE}/STATE/{SPARKPLUG_HOST_ID}"


def sparkplug_publish_topics(tenant: str, device: str) -> list[str]:
    group, node = validate_tenant(tenant), validate_device(device)
    return [
        *(f"{SPARKPLUG_NAMESPACE}/{group}/{kind}/{node}" for kind in SPARKPLUG_NODE_TYPES),
        *(f"{SPARKPLUG_NAMESPACE}/{group}/{kind}/{node}/+" for kind in SPARKPLUG_DEVICE_TYPES),
    ]


def sparkplug_ncmd_topic(tenant: str, device: str) -> str:
    return f"{SPARKPLUG_NAMESPACE}/{validate_tenant(tenant)}/NCMD/{validate_device(device)}"


def device_publish_topics(tenant: str, device: str, topics: ProfileTopics = NATIVE_TOPICS) -> list[str]:
    prefix = device_prefix(tenant, device)
    forms = [f"{prefix}/{form}" for form in (*DEVICE_PUBLISH_FORMS, *topics.publish)]
    return forms + (sparkplug_publish_topics(tenant, device) if topics.sparkplug else [])


# Every form a device can publish under any profile is below these filters, so the drain's session
# receives whatever the broker accepts from a device, whichever its profile. The command topic is
# below the first too: the drain skips it (shared/ingest/batch.py) and may not publish to it.
DEVICE_TREE = "t/+/d/+/#"
DRAIN_SUBSCRIPTIONS = (
    DEVICE_TREE,
    *(f"{SPARKPLUG_NAMESPACE}/+/{kind}/+" for kind in SPARKPLUG_NODE_TYPES),
    *(f"{SPARKPLUG_NAMESPACE}/+/{kind}/+/+" for kind in SPARKPLUG_DEVICE_TYPES),
)
# What the drain subscribed to before profiles: unsubscribed at connect, or Mosquitto would send a
# message matching two of the session's filters once per filter.
RETIRED_DRAIN_SUBSCRIPTIONS = tuple(f"t/+/d/+/{form}" for form in DEVICE_PUBLISH_FORMS)
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


def device_acls(tenant: str, device: str, topics: ProfileTopics = NATIVE_TOPICS) -> list[Acl]:
    """Publish the native forms and its profile's under its own prefix (and its Sparkplug topics);
    subscribe to and receive its command topic (a literal filter, so no wildcard of it is allowed
    either) and its profile's forms (a form with "+" as a pattern, within its own prefix)."""
    prefix = device_prefix(tenant, device)
    listens = [command_topic(tenant, device), *(f"{prefix}/{form}" for form in topics.subscribe)]
    if topics.sparkplug:
        listens += [
            sparkplug_ncmd_topic(tenant, device),
            f"{SPARKPLUG_NAMESPACE}/{tenant}/DCMD/{device}/+",
            SPARKPLUG_STATE_TOPIC,
        ]
    return [
        *(Acl("publishClientSend", topic) for topic in device_publish_topics(tenant, device, topics)),
        *(Acl("subscribePattern" if "+" in topic.split("/") else "subscribeLiteral", topic) for topic in listens),
        *(Acl("publishClientReceive", topic) for topic in listens),
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
    """The drain reads every device form, talks to itself on its marker topic, may publish (only) to
    the device forms so it can clear retained messages (see RETAINED_POLICY), never to a command
    topic, and publishes its Sparkplug STATE."""
    marker = f"{DRAIN_MARKER_ROOT}/#"
    kinds: tuple[AclType, ...] = ("subscribePattern", "publishClientReceive", "publishClientSend")
    return [
        *(Acl(kind, topic) for topic in DRAIN_SUBSCRIPTIONS for kind in kinds),
        Acl("publishClientSend", f"t/+/d/+/{COMMAND_FORM}", allow=False, priority=1),
        Acl("publishClientSend", SPARKPLUG_STATE_TOPIC),
        *(Acl(kind, marker) for kind in kinds),
    ]


def commander_acls() -> list[Acl]:
    """Publish to any device's command topic (the pattern matches exactly t/{tenant}/d/{device}/cmd)
    and to Sparkplug edge nodes' NCMD topics (rebirth requests), nothing else: no subscribe, no receive."""
    return [
        Acl("publishClientSend", f"t/+/d/+/{COMMAND_FORM}"),
        Acl("publishClientSend", f"{SPARKPLUG_NAMESPACE}/+/NCMD/+"),
    ]


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
