#!/usr/bin/env bash
# Rendered from shared/broker_contract.py by infra/render_broker_conf.py; edits are lost.
set -euo pipefail
# The VM's broker unless told otherwise (the tests point it at their own).
ctrl() { mosquitto_ctrl -h "${MQTT_CTRL_HOST:-localhost}" -p "${MQTT_CTRL_PORT:-8883}" --cafile "${MQTT_CTRL_CAFILE:-/etc/mosquitto/certs/ca.crt}" -u "${MQTT_ADMIN_USERNAME:-admin}" -P "$MQTT_ADMIN_PASSWORD" dynsec "$@"; }
mosquitto_pub -h "${MQTT_CTRL_HOST:-localhost}" -p "${MQTT_CTRL_PORT:-8883}" --cafile "${MQTT_CTRL_CAFILE:-/etc/mosquitto/certs/ca.crt}" -u "${MQTT_ADMIN_USERNAME:-admin}" -P "$MQTT_ADMIN_PASSWORD" -q 1 -t '$CONTROL/dynamic-security/v1' -m '{"commands": [{"command": "setDefaultACLAccess", "acls": [{"acltype": "publishClientSend", "allow": false}, {"acltype": "publishClientReceive", "allow": false}, {"acltype": "subscribe", "allow": false}, {"acltype": "unsubscribe", "allow": true}]}]}'
ctrl createRole provisioner || true
ctrl addRoleACL provisioner publishClientSend '$CONTROL/dynamic-security/#' allow 0 || true
ctrl addRoleACL provisioner subscribePattern '$CONTROL/dynamic-security/#' allow 0 || true
ctrl addRoleACL provisioner publishClientReceive '$CONTROL/dynamic-security/#' allow 0 || true
ctrl createRole ingest || true
ctrl addRoleACL ingest subscribePattern t/+/d/+/telemetry allow 0 || true
ctrl addRoleACL ingest publishClientReceive t/+/d/+/telemetry allow 0 || true
ctrl addRoleACL ingest publishClientSend t/+/d/+/telemetry allow 0 || true
ctrl addRoleACL ingest subscribePattern t/+/d/+/status allow 0 || true
ctrl addRoleACL ingest publishClientReceive t/+/d/+/status allow 0 || true
ctrl addRoleACL ingest publishClientSend t/+/d/+/status allow 0 || true
ctrl addRoleACL ingest subscribePattern t/+/d/+/+/state allow 0 || true
ctrl addRoleACL ingest publishClientReceive t/+/d/+/+/state allow 0 || true
ctrl addRoleACL ingest publishClientSend t/+/d/+/+/state allow 0 || true
ctrl addRoleACL ingest subscribePattern 'mqtt-saas/drain/#' allow 0 || true
ctrl addRoleACL ingest publishClientReceive 'mqtt-saas/drain/#' allow 0 || true
ctrl addRoleACL ingest publishClientSend 'mqtt-saas/drain/#' allow 0 || true
ctrl createClient mqtt-saas-provisioner -p "$MQTT_PROVISIONER_PASSWORD" || true
ctrl addClientRole mqtt-saas-provisioner provisioner 0 || true
ctrl createClient mqtt-saas-ingest -c mqtt-saas-ingest -p "$MQTT_INGEST_PASSWORD" || true
ctrl addClientRole mqtt-saas-ingest ingest 0 || true
