"""What the gateway must agree on with the cloud, copied on purpose from the cloud app's broker contract and
payload schema (shared/), which the gateway does not import: it runs on a Raspberry Pi or an industrial PC with
its own few packages, not the function app's.

tests/gateway/test_contract.py fails when any value here stops matching the cloud's, so a change on one side
cannot silently make the gateway publish what the drain dead-letters or the broker refuses.
"""

from __future__ import annotations

import re

# Names (shared.broker.contract): a device credential's username is "{tenant}.{device}", bound to the same client
# id; neither name may contain "." or "/".
TENANT_SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
DEVICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
METRIC_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
TENANT_RE = re.compile(TENANT_SLUG_PATTERN)
DEVICE_RE = re.compile(DEVICE_NAME_PATTERN)
METRIC_RE = re.compile(METRIC_NAME_PATTERN)

# Topics below a device's prefix t/{tenant}/d/{device}/ (shared.broker.contract.DEVICE_PUBLISH_FORMS, COMMAND_FORM).
TELEMETRY_FORM = "telemetry"
STATUS_FORM = "status"
STATE_SUFFIX = "state"  # t/{tenant}/d/{device}/{metric}/state: the only form that carries a unit
COMMAND_FORM = "cmd"

# Payload limits (shared.ingest.validation.Limits, the defaults of INGEST_MAX_PAYLOAD_BYTES, INGEST_MAX_METRICS,
# INGEST_MAX_RECORDS): a message over any of them is dead-lettered whole by the drain.
MAX_PAYLOAD_BYTES = 65536
MAX_METRICS = 100
MAX_RECORDS = 1000
MAX_TEXT_VALUE = 256  # characters of a string value (shared.ingest.validation.MAX_TEXT_VALUE)
UNIT_MAX_CHARS = 32  # longer units are cut by the drain (shared.ingest.batch.UNIT_MAX_CHARS)
# Readings older than this are dead-lettered (INGEST_MAX_PAST_DAYS' default), and so is every reading that shares
# their message: the gateway expires them from its buffer a day earlier.
INGEST_MAX_PAST_DAYS = 30

# Commands (shared.devices.commands): a device acknowledges with readings of these metrics in its own telemetry.
ACK_METRIC = "cmd_ack"
RESULT_METRIC = "cmd_result"

# The broker (shared.broker.contract.BROKER_SETTINGS).
BROKER_MESSAGE_SIZE_LIMIT = 1048576  # message_size_limit: above the app's limit, so never the binding one
# autosave_interval: Mosquitto persists by snapshot, so a SIGKILLed broker forgets the messages it acknowledged since
# its last save, at most this long before it died. The gateway keeps acknowledged readings this long (plus a margin)
# and sends them again after every reconnect.
BROKER_AUTOSAVE_INTERVAL_S = 10
# How far a snapshot may come after its interval: Mosquitto checks the interval in whole seconds once per loop
# iteration, and a snapshot of a long queue takes time of its own.
AUTOSAVE_MARGIN_S = 5
RESEND_WINDOW_S = BROKER_AUTOSAVE_INTERVAL_S + AUTOSAVE_MARGIN_S


def device_prefix(tenant: str, device: str) -> str:
    return f"t/{tenant}/d/{device}"


def device_username(tenant: str, device: str) -> str:
    return f"{tenant}.{device}"
