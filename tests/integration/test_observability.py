"""Metrics through the Azure Monitor OpenTelemetry distro: a drain run through the registered
mqtt_ingest function records per-tenant messages, dead letters per reason, lag and backlog, and
the run pushes them before it returns. The distro is configured for real with a connection
string whose ingestion endpoint is a closed local port, plus an in-memory reader that sees
exactly what would be exported."""

from __future__ import annotations

import logging
import socket
import time
import uuid

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from shared.core import observability
from tests.support.devices import Device, new_tenant_with_devices, run_mqtt_ingest

_reader = InMemoryMetricReader()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def exported():
    connection_string = f"InstrumentationKey={uuid.uuid4()};IngestionEndpoint=http://127.0.0.1:{_closed_port()}/"
    assert observability.configure(connection_string, extra_readers=[_reader])
    return _reader


def _points(reader: InMemoryMetricReader) -> dict[str, list]:
    data = reader.get_metrics_data()
    found: dict[str, list] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            if scope.scope.name != observability.METER_NAME:
                continue
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def _sum_by(points: list, attribute: str) -> dict[str, float]:
    return {p.attributes[attribute]: p.value for p in points if attribute in p.attributes}


def test_without_a_connection_string_nothing_is_configured():
    assert observability.configure(None) is False
    assert observability.configure("") is False


def test_a_drain_run_records_per_tenant_and_per_reason_metrics(exported, settings, app_pool, monkeypatch):
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", "InstrumentationKey=x")  # timer_run configures once
    tenant, creds = new_tenant_with_devices(app_pool, settings, ["mill-1"])
    device = Device(settings, creds["mill-1"])
    now = int(time.time() * 1000)
    mids = [device.publish("telemetry", {"ts": now - i, "metrics": {"rpm": i}}) for i in range(3)]
    mids.append(device.publish("telemetry", b"{not json"))
    device.wait_acked(mids)
    device.close()
    before = _points(exported)
    before_messages = _sum_by(before.get("ingest_messages_total", []), "tenant").get(tenant["slug"], 0)

    run_mqtt_ingest()

    after = _points(exported)
    assert _sum_by(after["ingest_messages_total"], "tenant")[tenant["slug"]] - before_messages == 3
    assert _sum_by(after["parse_error_total"], "reason").get("invalid_json", 0) >= 1
    assert any(p.count >= 1 for p in after["ingest_lag_ms"])
    assert any(p.max >= 4 for p in after["backlog_size"])
    durations = [p for p in after["timer_run_duration_ms"] if p.attributes.get("function") == "mqtt_ingest"]
    assert durations and durations[0].count >= 1


def test_flush_is_bounded_when_the_ingestion_endpoint_is_down(exported):
    started = time.monotonic()
    observability.flush(timeout_ms=500)
    # bounded by its timeout (plus the exporter's own connect failure), never the 30 s default
    assert time.monotonic() - started < 10


def test_event_lines_are_name_then_json(caplog):
    logger = logging.getLogger("tests.observability")
    with caplog.at_level(logging.INFO, logger="tests.observability"):
        observability.event(logger, "device.sync", {"tenant_id": "t1", "device_id": 7, "run_id": None})
    assert caplog.messages == ['device.sync {"device_id":7,"run_id":null,"tenant_id":"t1"}']


def test_bound_fields_reach_every_event_line_inside_the_block(caplog):
    logger = logging.getLogger("tests.observability")
    with caplog.at_level(logging.INFO, logger="tests.observability"):
        with observability.bound(run_id=42, tenant_id="t9"):
            observability.event(logger, "inner", {"device_id": 3})
            with observability.bound(device_id=4):
                observability.event(logger, "nested")
        observability.event(logger, "outside")
    assert caplog.messages == [
        'inner {"device_id":3,"run_id":42,"tenant_id":"t9"}',
        'nested {"device_id":4,"run_id":42,"tenant_id":"t9"}',
        "outside {}",
    ]
