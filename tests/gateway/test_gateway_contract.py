"""The gateway copies, on purpose, the few things it must agree on with the cloud (gateway/contract.py): this fails
when one side changes without the other. No servers: part of the fast tier."""

from __future__ import annotations

import json
import time

import pytest

from gateway import contract
from gateway.buffer import STATE, TELEMETRY, Row
from gateway.payloads import build_messages
from shared.broker import contract as broker_contract
from shared.core.settings import Settings
from shared.devices import commands
from shared.ingest import batch
from shared.ingest import validation as payloads


def test_names_and_topics_match_the_broker_contract():
    assert contract.TENANT_SLUG_PATTERN == broker_contract.TENANT_SLUG_PATTERN
    assert contract.DEVICE_NAME_PATTERN == broker_contract.DEVICE_NAME_PATTERN
    assert contract.METRIC_NAME_PATTERN == broker_contract.METRIC_NAME_PATTERN
    assert contract.device_prefix("acme", "m-1") == broker_contract.device_prefix("acme", "m-1")
    assert contract.device_username("acme", "m-1") == broker_contract.device_username("acme", "m-1")
    assert (
        contract.TELEMETRY_FORM,
        contract.STATUS_FORM,
        f"+/{contract.STATE_SUFFIX}",
    ) == broker_contract.DEVICE_PUBLISH_FORMS
    assert contract.COMMAND_FORM == broker_contract.COMMAND_FORM


def test_limits_match_the_drain_and_the_broker():
    limits = payloads.Limits()
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    assert contract.MAX_PAYLOAD_BYTES == limits.max_payload_bytes == defaults["ingest_max_payload_bytes"]
    assert contract.MAX_METRICS == limits.max_metrics == defaults["ingest_max_metrics"]
    assert contract.MAX_RECORDS == limits.max_records == defaults["ingest_max_records"]
    assert defaults["ingest_max_past_days"] == contract.INGEST_MAX_PAST_DAYS
    assert contract.MAX_TEXT_VALUE == payloads.MAX_TEXT_VALUE
    assert contract.UNIT_MAX_CHARS == batch.UNIT_MAX_CHARS
    assert contract.ACK_METRIC == commands.ACK_METRIC and contract.RESULT_METRIC == commands.RESULT_METRIC


def test_the_resend_window_covers_the_brokers_autosave_interval():
    settings = broker_contract.BROKER_SETTINGS
    assert settings["persistence"] == "true" and "autosave_on_changes" not in settings
    assert int(settings["autosave_interval"]) == contract.BROKER_AUTOSAVE_INTERVAL_S
    assert contract.RESEND_WINDOW_S > contract.BROKER_AUTOSAVE_INTERVAL_S
    assert contract.BROKER_MESSAGE_SIZE_LIMIT == int(settings["message_size_limit"]) > contract.MAX_PAYLOAD_BYTES


@pytest.mark.parametrize("max_records", [1, 500, 1000])
def test_what_the_gateway_builds_passes_the_drains_own_validation(max_records):
    # GIVEN a full backlog: readings of 100 metrics with long text values, and /state readings with units
    now = int(time.time() * 1000)
    metrics = {f"m{i:02d}.{'x' * 50}": ("y" * 256 if i % 2 else i * 0.5) for i in range(100)}
    rows = [Row(seq, now + seq, TELEMETRY, json.dumps(metrics, separators=(",", ":"))) for seq in range(1, 400)]
    rows += [Row(400, now, STATE, json.dumps({"metric": "energy", "value": 12.5, "unit": "kWh"}))]

    # WHEN the gateway cuts its messages
    messages = build_messages("acme", "meter-01", rows, max_records)

    # THEN each one is one the drain accepts as it is, and together they carry every row once
    carried = []
    for message in messages:
        topic = payloads.parse_topic(message.topic)
        assert (topic.tenant, topic.device) == ("acme", "meter-01")
        if topic.kind == "telemetry":
            readings = payloads.validate_telemetry(message.payload, payloads.Limits())
            assert len(readings) <= max_records and len(message.payload) <= contract.MAX_PAYLOAD_BYTES
            assert [r["seq"] for r in readings] == list(message.seqs)
            assert all(payloads.timestamp_us(r["ts"]) == (now + r["seq"]) * 1000 for r in readings)
        else:
            state = payloads.validate_state(message.payload, payloads.Limits())
            assert (topic.entity, state["value"], state["unit"]) == ("energy", 12.5, "kWh")
        carried += message.seqs
    assert sorted(carried) == list(range(1, 401))
